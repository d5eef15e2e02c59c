"""Feathering: the pack's one Gaussian blur for soft region edges.

A feather of f pixels is a Gaussian of sigma = f / 2 pixels wherever it is applied: on the MASK outputs and
previews (`feathered_masks`, at picture pixels) and on FLUX's token grid (attention_patches/token_masks.py blurs
the latent-sized masks with the same function, sigma = f / 2 / 8). Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .regions import RegionLayout


def gaussian_blur(masks: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [..., H, W] masks in 0..1; sigma in pixels of these masks.

    The kernel is sampled to 3 sigma and normalised; edges repeat, so a region touching the border stays whole
    there. The radius is never cut to the mask's size (repeated edges pad any radius), so a feather looks the same
    at every picture size. The result is clamped to 0..1: a normalised kernel over values in 0..1 leaves that range
    only by rounding, and MASK outputs promise 0..1.
    """
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    shape = masks.shape
    x = masks.reshape(-1, 1, *shape[-2:]).float()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.reshape(shape).clamp(0, 1)


def feather_mask(mask: torch.Tensor, feather: float) -> torch.Tensor:
    """A mask with a feather of `feather` pixels (sigma = feather / 2); unchanged when feather is 0."""
    return gaussian_blur(mask, feather / 2) if feather > 0 else mask


def feathered_masks(layout: RegionLayout) -> torch.Tensor:
    """[R, H, W]: each region's mask with its own feather applied (for MASK outputs and previews)."""
    if not layout.regions:
        return layout.masks()
    return torch.stack([feather_mask(r.mask, r.feather) for r in layout.regions])
