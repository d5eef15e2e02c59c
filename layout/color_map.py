"""Regions from a colour-coded segmentation map: one region per distinct colour, black is the background.

Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .regions import MAX_REGIONS, Region, RegionLayout


def layout_from_color_map(image: torch.Tensor, prompts: list[str], *, width: int, height: int, tolerance: int = 16,
                          base_prompt: str = "", background_prompt: str = "",
                          input_name: str = "color_map") -> RegionLayout:
    """One region per distinct colour of a segmentation map ([H, W, 3] or [1, H, W, 3] in 0..1).

    Colours within `tolerance` (0..255, per channel) of a region's first colour join that region; regions are
    ordered by where their colour first appears (left to right, top to bottom); black is the background.
    """
    if image.ndim == 4:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(f"{input_name}: expected an RGB image, got shape {tuple(image.shape)}")
    pixels = (image[..., :3].clamp(0, 1) * 255).round().to(torch.int16).reshape(-1, 3)
    colors, inverse = torch.unique(pixels, dim=0, return_inverse=True)
    first_seen = torch.full((colors.shape[0],), pixels.shape[0], dtype=torch.long)
    first_seen.scatter_reduce_(0, inverse, torch.arange(pixels.shape[0]), reduce="amin")
    cluster = torch.full((colors.shape[0],), -1, dtype=torch.long)
    centres: list[torch.Tensor] = []
    for index in torch.argsort(first_seen).tolist():
        if cluster[index] >= 0:
            continue
        near = ((colors - colors[index]).abs().amax(1) <= tolerance) & (cluster < 0)
        cluster[near] = len(centres)
        centres.append(colors[index])
        if len(centres) > MAX_REGIONS + 1:
            raise ValueError(f"{input_name}: more than {MAX_REGIONS} colours; raise the tolerance or use a PNG map")
    regions_of = [i for i, c in enumerate(centres) if int(c.max()) > tolerance]  # black (within tolerance) = none
    if len(regions_of) != len(prompts):
        raise ValueError(f"{input_name}: the map has {len(regions_of)} colours (besides black) but there are "
                         f"{len(prompts)} prompts; give one prompt per line per colour, in reading order")
    labels = cluster[inverse].reshape(image.shape[:2])
    masks = torch.stack([(labels == i).float() for i in regions_of]) if regions_of else torch.zeros(0, *labels.shape)
    if masks.shape[-2:] != (height, width) and masks.shape[0]:
        masks = F.interpolate(masks[:, None], size=(height, width), mode="nearest-exact")[:, 0]
    regions = tuple(Region(prompt=p, mask=m.contiguous(), color="#%02x%02x%02x" % tuple(centres[i].tolist()))
                    for p, m, i in zip(prompts, masks, regions_of))
    return RegionLayout(width, height, regions, base_prompt, background_prompt)
