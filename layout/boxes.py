"""Phrase boxes for the GLIGEN layout prior: from a region layout or from text, checked and mapped to the prior.

A box is normalised (x, y, w, h) in [0, 1] of the picture it describes. Mapping policy for other aspect ratios:
boxes keep their normalised position, so on a 512x512 prior a 1536x1024 layout is squeezed horizontally; the
pipeline then stretches the prior back to 1536x1024 (ImageScale) before SDXL sees it, which restores every box.
Give the prior the layout's aspect ratio (e.g. 768x512) to avoid the squeeze. Plain torch: no ComfyUI imports.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from .regions import RegionLayout

GLIGEN_MAX_BOXES = 30  # comfy.gligen.Gligen.max_objs
Box = tuple[float, float, float, float]

_LINE = re.compile(r"^\s*([-+0-9.eE]+)[\s,]+([-+0-9.eE]+)[\s,]+([-+0-9.eE]+)[\s,]+([-+0-9.eE]+)\s*[:|]?\s*(.*)$")


def parse_boxes(text: str) -> list[tuple[str, Box]]:
    """One box per line: `x y w h: phrase` (commas allowed), fractions of the picture. Blank lines and lines
    starting with # are skipped."""
    boxes = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None or not match.group(5).strip():
            raise ValueError(f"line {number} ({line.strip()!r}) is not `x y w h: phrase` with fractions 0..1")
        x, y, w, h = (float(match.group(i)) for i in range(1, 5))
        boxes.append((match.group(5).strip(), (x, y, w, h)))
    return boxes


def boxes_from_layout(layout: RegionLayout) -> list[tuple[str, Box]]:
    """Each region with a non-empty mask and a prompt, as (prompt, its mask's bounding box)."""
    return [
        (prompt, box) for prompt, box in zip(layout.prompts(), layout.boxes()) if box is not None and prompt.strip()
    ]


def box_mask(boxes: list[tuple[str, Box]], height: int, width: int) -> torch.Tensor:
    """[height, width] float: the union of the boxes, each cell holding the share of it the boxes cover (boxes
    drawn on an 8x finer grid, then area-averaged), so small boxes on a coarse latent still count."""
    fine = torch.zeros(1, 1, height * 8, width * 8)
    for _, (x, y, w, h) in boxes:
        x0, y0 = round(x * width * 8), round(y * height * 8)
        x1, y1 = round((x + w) * width * 8), round((y + h) * height * 8)
        fine[..., y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] = 1
    return F.avg_pool2d(fine, 8)[0, 0]


def check_boxes(boxes: list[tuple[str, Box]], source: str) -> None:
    if not boxes:
        raise ValueError(f"{source}: no boxes: draw at least one region with a prompt (or give `x y w h: phrase`)")
    if len(boxes) > GLIGEN_MAX_BOXES:
        raise ValueError(
            f"{source}: {len(boxes)} boxes, GLIGEN takes at most {GLIGEN_MAX_BOXES}: merge or remove regions"
        )
    for phrase, (x, y, w, h) in boxes:
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise ValueError(f"{source}: box {phrase!r} has no area ({x}, {y}, {w}, {h}): give a positive w and h")
        if x < -1e-6 or y < -1e-6 or x + w > 1 + 1e-6 or y + h > 1 + 1e-6:
            raise ValueError(
                f"{source}: box {phrase!r} ({x}, {y}, {w}, {h}) lies outside the image: "
                "keep x, y >= 0 and x + w, y + h <= 1"
            )


def gligen_position(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """(h, w, y, x) in latent units (8 px) of a width x height prior, as GLIGENTextBoxApply stores them.
    Edges are rounded outward so a box never shrinks below one latent cell."""
    x, y, w, h = box
    lw, lh = width // 8, height // 8
    x0, y0 = min(math.floor(x * lw + 1e-6), lw - 1), min(math.floor(y * lh + 1e-6), lh - 1)
    x1, y1 = max(math.ceil((x + w) * lw - 1e-6), x0 + 1), max(math.ceil((y + h) * lh - 1e-6), y0 + 1)
    return min(y1, lh) - y0, min(x1, lw) - x0, y0, x0
