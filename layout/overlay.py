"""A colour overlay of a region layout on an image, to check at a glance where each prompt applies."""

from __future__ import annotations

import colorsys
from dataclasses import replace

import torch
import torch.nn.functional as F

from .feather import feathered_masks
from .regions import RegionLayout


def region_color(index: int, color: str = "") -> tuple[float, float, float]:
    """The region's own "#rrggbb" colour, else a well-spread hue (golden-ratio steps) for its index."""
    if len(color) == 7 and color.startswith("#"):
        try:
            return tuple(int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    return colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 1.0)


def overlay_regions(image: torch.Tensor, layout: RegionLayout, opacity: float = 0.5) -> torch.Tensor:
    """Tint `image` ([B, H, W, 3] in 0..1, ComfyUI's IMAGE) with each region's colour where its mask is set.

    Masks are resized to the image; where regions overlap their colours mix in proportion to mask strength.
    """
    batch, height, width, _ = image.shape
    masks = layout.masks()
    if masks.shape[0] == 0:
        return image.clone()
    masks = F.interpolate(masks[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    masks = masks.clamp(0, 1).to(image)
    colors = torch.tensor([region_color(i, r.color) for i, r in enumerate(layout.regions)]).to(image)
    weight = masks.sum(0)  # [H, W]
    tint = torch.einsum("rhw,rc->hwc", masks, colors) / weight.clamp(min=1e-6)[..., None]
    alpha = (opacity * weight.clamp(max=1))[..., None]
    return image * (1 - alpha) + tint * alpha


def layout_preview(layout: RegionLayout, opacity: float = 0.6) -> torch.Tensor:
    """[1, H, W, 3] colour-coded picture of the (feathered) regions over mid grey; uncovered stays grey."""
    soft = feathered_masks(layout)
    shown = layout.with_regions(tuple(replace(r, mask=m) for r, m in zip(layout.regions, soft)))
    grey = torch.full((1, layout.height, layout.width, 3), 0.35)
    return overlay_regions(grey, shown, opacity)
