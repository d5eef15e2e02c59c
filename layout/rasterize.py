"""Rasterising a parsed layout JSON (layout_json.py) into the pack's RegionLayout: exact pixels, in order.

A region's mask is its embedded mask stretched to the picture, then each shape drawn over it (an `erase` stroke
clears pixels of its own region only). Plain torch + pillow: nothing here imports ComfyUI.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .layout_json import LayoutSpec, RegionSpec, Shape
from .regions import Region, RegionLayout, check_layout_size


def _px(value: float, scale: int) -> int:
    return int(math.floor(value * scale + 0.5))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, width: int, height: int) -> None:
    if shape.type in ("rect", "ellipse"):
        x, y, w, h = shape.coords
        x0, y0, x1, y1 = _px(x, width), _px(y, height), _px(x + w, width), _px(y + h, height)
        if x1 <= x0 or y1 <= y0:  # thinner than a pixel at this size
            return
        (draw.rectangle if shape.type == "rect" else draw.ellipse)([x0, y0, x1 - 1, y1 - 1], fill=255)
        return
    points = [(x * width - 0.5, y * height - 0.5) for x, y in shape.points]  # PIL addresses pixel centres
    if shape.type == "polygon":
        draw.polygon(points, fill=255)
        return
    fill = 0 if shape.erase else 255
    diameter = shape.size * width
    radius = diameter / 2
    if len(points) > 1 and diameter >= 1:
        draw.line(points, fill=fill, width=max(1, round(diameter)), joint="curve")
    for px, py in (points if len(points) == 1 else (points[0], points[-1])):
        draw.ellipse([px - radius + 0.5, py - radius + 0.5, px + radius - 0.5, py + radius - 0.5], fill=fill)


def rasterize_region(spec: RegionSpec, width: int, height: int) -> torch.Tensor:
    """[height, width] float32 in 0..1: the embedded mask, then each shape in order."""
    if spec.mask is not None:
        base = F.interpolate(spec.mask[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        canvas = Image.fromarray((base.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), mode="L")
    else:
        canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in spec.shapes:
        _draw_shape(draw, shape, width, height)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)


def build_layout(spec: LayoutSpec, width: int, height: int, base_prompt: str = "",
                 background_prompt: str = "") -> RegionLayout:
    """Rasterise every region at width x height; prompts in the JSON win over the given ones."""
    check_layout_size(width, height, len(spec.regions))
    regions = tuple(Region(prompt=r.prompt, mask=rasterize_region(r, width, height), name=r.name, color=r.color,
                           feather=r.feather) for r in spec.regions)
    return RegionLayout(width, height, regions,
                        base_prompt if spec.base_prompt is None else spec.base_prompt,
                        background_prompt if spec.background_prompt is None else spec.background_prompt)
