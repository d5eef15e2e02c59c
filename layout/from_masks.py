"""Build a RegionLayout from a batch of masks and one prompt per line."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .regions import MAX_REGIONS, Region, RegionLayout, check_layout_size


def split_prompts(text: str) -> list[str]:
    """One prompt per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def resize_masks(masks: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[R, H, W] → [R, height, width], bilinear (soft edges stay soft)."""
    if masks.shape[-2:] == (height, width):
        return masks
    return F.interpolate(masks[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def layout_from_masks(
    masks: torch.Tensor,
    prompts: list[str],
    *,
    width: int,
    height: int,
    base_prompt: str = "",
    background_prompt: str = "",
    feather: float = 0.0,
) -> RegionLayout:
    """One region per mask, in order; masks are resized to width x height and clamped to [0, 1]."""
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks must be [R, H, W], got shape {tuple(masks.shape)}")
    if len(prompts) != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {len(prompts)} prompts: give one prompt per line per mask")
    if masks.shape[0] > MAX_REGIONS:
        raise ValueError(f"{masks.shape[0]} masks; at most {MAX_REGIONS} regions are supported")
    check_layout_size(width, height, masks.shape[0])
    if not torch.isfinite(masks).all():
        raise ValueError("masks contain NaN or infinite values")
    masks = resize_masks(masks, width, height).clamp(0, 1)
    regions = tuple(Region(prompt=p, mask=m.contiguous(), feather=feather) for p, m in zip(prompts, masks))
    return RegionLayout(width, height, regions, base_prompt, background_prompt)
