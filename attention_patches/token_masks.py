"""Region masks brought to FLUX's token grid (one token per 2x2 latent patch, i.e. per 16x16 pixels).

A token belongs to a region when the region covers at least half of its area; a region with any pixel keeps at
least its best-covered token (argmax fill), so small regions never vanish. This boolean membership is the paper's
attention mask (Chen et al., arXiv 2411.02395). Soft weights are this pack's extension of it: regions with soft
values or a feather keep their coverage (0..1) per token as weights, which only the dense attention path applies.
Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layout.feather import gaussian_blur

COVER_THRESHOLD = 0.5
SOFT_EPS = 1e-3  # pixel values further than this from 0 and 1 make a mask soft


@dataclass(frozen=True, eq=False)
class TokenMasks:
    """Per-region membership of the image tokens, row-major over the (rows, cols) token grid."""

    grid: tuple[int, int]
    hard: torch.Tensor  # [R, N] bool: the token is in the region
    weights: torch.Tensor  # [R, N] float32 in [0, 1]: equals `hard` for hard-edged regions, coverage for soft ones
    soft: bool  # some region has soft values, so only the dense path is exact

    @property
    def disjoint(self) -> bool:
        return bool((self.hard.sum(0) <= 1).all())

    @property
    def covered(self) -> torch.Tensor:
        """[N] bool: the token is in some region."""
        return self.hard.any(0)


def token_grid(latent_h: int, latent_w: int, patch_size: int = 2) -> tuple[int, int]:
    """FLUX pads the latent to whole patches, so a picture of H x W pixels has ceil(H/16) x ceil(W/16) tokens."""
    return math.ceil(latent_h / patch_size), math.ceil(latent_w / patch_size)


def is_soft(mask: torch.Tensor) -> bool:
    return bool(((mask > SOFT_EPS) & (mask < 1 - SOFT_EPS)).any())


def token_coverage(
    masks: torch.Tensor,
    latent_h: int,
    latent_w: int,
    patch_size: int = 2,
    feathers: list[float] | None = None,
    vae_scale: int = 8,
) -> torch.Tensor:
    """[R, H, W] pixel masks → [R + 1, rows, cols] fraction of each token's area a region (last: their union)
    covers.

    Masks are area-resized to the latent, feathered there (layout/feather.py: sigma = feather / 2 picture pixels),
    padded the way FLUX pads the latent (edge replicated) and averaged over each patch.
    """
    if masks.shape[0] == 0:
        return torch.zeros(1, *token_grid(latent_h, latent_w, patch_size))
    lat = F.interpolate(masks[:, None].float(), size=(latent_h, latent_w), mode="area")[:, 0]
    if feathers:
        lat = torch.stack([gaussian_blur(m, f / (2 * vae_scale)) if f > 0 else m for m, f in zip(lat, feathers)])
    pad_h, pad_w = (-latent_h) % patch_size, (-latent_w) % patch_size
    if pad_h or pad_w:
        lat = F.pad(lat[:, None], (0, pad_w, 0, pad_h), mode="replicate")[:, 0]
    lat = torch.cat([lat, lat.max(0, keepdim=True).values])  # last row: the union, to tell overlaps from ties
    return F.avg_pool2d(lat[:, None], patch_size)[:, 0].clamp(0, 1)


def assign_tokens(coverage: torch.Tensor, union: torch.Tensor | None = None) -> torch.Tensor:
    """[R, N] coverage → [R, N] bool membership: coverage >= 0.5, plus each non-empty region's best token.

    Where regions do not overlap inside a token (their coverages add up to the union's), two halves are a tie,
    not an overlap: the first region takes the token. The fill prefers a token no other region holds, so
    disjoint layouts stay disjoint.
    """
    hard = coverage >= COVER_THRESHOLD
    if union is not None and coverage.shape[0] > 1:
        tie = (hard.sum(0) > 1) & (coverage.sum(0) <= union + 1e-4)
        first = torch.zeros_like(hard)
        first[hard.float().argmax(0), torch.arange(hard.shape[1])] = True
        hard = torch.where(tie[None], hard & first, hard)
    for i in range(coverage.shape[0]):
        if hard[i].any() or not (coverage[i] > 0).any():
            continue
        free = ~hard.any(0) & (coverage[i] > 0)
        candidates = torch.where(free, coverage[i], torch.full_like(coverage[i], -1.0)) if free.any() else coverage[i]
        hard[i, int(candidates.argmax())] = True
    return hard


def region_token_masks(
    masks: torch.Tensor,
    latent_h: int,
    latent_w: int,
    *,
    feathers: list[float] | None = None,
    background: bool = False,
    patch_size: int = 2,
    vae_scale: int = 8,
) -> TokenMasks:
    """Token membership of every region; with `background`, one more region holds the tokens no region holds
    (dropped when there are none). Regions with no pixels keep an empty row."""
    feathers = list(feathers) if feathers is not None else [0.0] * masks.shape[0]
    coverage = token_coverage(masks, latent_h, latent_w, patch_size, feathers, vae_scale).flatten(1)
    coverage, union = coverage[:-1], coverage[-1]
    hard = assign_tokens(coverage, union)
    soft_rows = [is_soft(m) or f > 0 for m, f in zip(masks, feathers)]
    weights = (
        torch.stack([c if s else h.float() for c, h, s in zip(coverage, hard, soft_rows)])
        if soft_rows
        else coverage.clone()
    )
    if background:
        free = ~hard.any(0)
        if free.any():
            # what the regions leave: exactly `free` when every region is hard-edged
            rest = (1 - weights.max(0).values).clamp(0, 1) if weights.shape[0] else free.float()
            hard = torch.cat([hard, free[None]])
            weights = torch.cat([weights, rest[None]])
    return TokenMasks(token_grid(latent_h, latent_w, patch_size), hard, weights.float(), any(soft_rows))
