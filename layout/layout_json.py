"""The layout JSON (the region editor's state, or written by hand or by an LLM planner): schema and validation.

Schema, version 1 (coordinates normalised to 0..1 of the picture unless noted):

    {"version": 1, "width": 1024, "height": 768,            # width/height optional (the node's widgets win)
     "base_prompt": "...", "background_prompt": "...",      # optional; override the node's widgets when present
     "regions": [{"name": "cat", "prompt": "a cat", "color": "#e6194b", "feather": 8, "hidden": false,
                  "box": [x, y, w, h],                        # optional, pixels or 0..1 (all values <= 1)
                  "mask": "data:image/png;base64,...",        # optional, grey PNG stretched to the picture
                  "shapes": [{"type": "rect", "x": .1, "y": .1, "w": .3, "h": .4},
                             {"type": "ellipse", "x": .5, "y": .5, "w": .2, "h": .2},
                             {"type": "polygon", "points": [[x, y], ...]},
                             {"type": "stroke", "points": [[x, y], ...], "size": .05, "erase": false}]}]}

A region's mask is: the embedded mask, then the box, then each shape in order; an `erase` stroke clears pixels
of its own region only. A stroke's `size` is the brush diameter as a fraction of the picture width. `hidden`
only hides the region in the editor; it still applies. Feather is in pixels and is carried on the Region
(see feather.py). Rasterising the parsed layout: rasterize.py. Plain torch + pillow: nothing here imports ComfyUI.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .regions import MAX_REGIONS

VERSION = 1
MAX_JSON_CHARS = 16_000_000
MAX_SHAPES = 4096  # per region
MAX_POINTS = 20_000  # per stroke or polygon
MAX_MASK_SIDE = 2048  # embedded mask PNG, per side
MAX_MASK_BYTES = 4_000_000
MAX_FEATHER = 256.0
SHAPE_TYPES = ("rect", "ellipse", "polygon", "stroke")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shape:
    type: str
    coords: tuple[float, ...] = ()  # rect/ellipse: x, y, w, h
    points: tuple[tuple[float, float], ...] = ()  # polygon/stroke
    size: float = 0.0  # stroke diameter, fraction of the width
    erase: bool = False


@dataclass(frozen=True)
class RegionSpec:
    prompt: str
    name: str = ""
    color: str = ""
    feather: float = 0.0
    hidden: bool = False
    mask: torch.Tensor | None = None  # [h, w] float 0..1 at its own size
    shapes: tuple[Shape, ...] = ()


@dataclass(frozen=True)
class LayoutSpec:
    regions: tuple[RegionSpec, ...] = field(default_factory=tuple)
    width: int | None = None
    height: int | None = None
    base_prompt: str | None = None
    background_prompt: str | None = None


class _Checker:
    """Validation helpers whose errors all name the node input and where in the JSON the problem is."""

    def __init__(self, input_name: str):
        self.input_name = input_name

    def fail(self, where: str, message: str) -> ValueError:
        return ValueError(f"{self.input_name}: {where}: {message}" if where else f"{self.input_name}: {message}")

    def number(self, value, where: str, *, lo: float | None = None, hi: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(where, f"expected a number, got {json.dumps(value)[:40]}")
        value = float(value)
        if not math.isfinite(value):
            raise self.fail(where, "NaN or infinite numbers are not allowed")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(where, f"{value:g} is outside [{lo:g}, {hi:g}]")
        return value

    def text(self, value, where: str, limit: int = 20_000) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(where, f"expected a string, got {type(value).__name__}")
        if len(value) > limit:
            raise self.fail(where, f"text longer than {limit} characters")
        return value

    def points(self, value, where: str, minimum: int) -> tuple[tuple[float, float], ...]:
        if not isinstance(value, list) or len(value) < minimum:
            raise self.fail(where, f"expected a list of at least {minimum} [x, y] points")
        if len(value) > MAX_POINTS:
            raise self.fail(where, f"{len(value)} points; at most {MAX_POINTS} are allowed")
        out = []
        for i, point in enumerate(value):
            if not isinstance(point, (list, tuple)) or len(point) != 2:
                raise self.fail(f"{where}[{i}]", "a point must be [x, y]")
            out.append((self.number(point[0], f"{where}[{i}]"), self.number(point[1], f"{where}[{i}]")))
        return tuple(out)


def _clip_box(check: _Checker, box: tuple[float, float, float, float], where: str) -> tuple[float, ...]:
    """Clip a normalised (x, y, w, h) box to the picture, warning when it was outside; zero area is an error."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise check.fail(where, f"box {list(box)} has zero or negative area; give w > 0 and h > 0")
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, 1.0), min(y + h, 1.0)
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        if x1 <= x0 or y1 <= y0:
            raise check.fail(where, f"box {list(box)} lies entirely outside the picture")
        log.warning("%s: %s: box %s reaches outside the picture; clipped", check.input_name, where, list(box))
    return x0, y0, x1 - x0, y1 - y0


def _parse_shape(check: _Checker, raw, where: str) -> Shape:
    if not isinstance(raw, dict):
        raise check.fail(where, "a shape must be an object with a 'type'")
    kind = raw.get("type")
    if kind not in SHAPE_TYPES:
        raise check.fail(where, f"unknown shape type {json.dumps(kind)[:40]}; use one of {', '.join(SHAPE_TYPES)}")
    if kind in ("rect", "ellipse"):
        box = tuple(check.number(raw.get(k), f"{where}.{k}") for k in ("x", "y", "w", "h"))
        return Shape(kind, coords=_clip_box(check, box, where))
    if kind == "polygon":
        return Shape(kind, points=check.points(raw.get("points"), f"{where}.points", 3))
    size = check.number(raw.get("size"), f"{where}.size", lo=0.0, hi=1.0)
    if size <= 0:
        raise check.fail(f"{where}.size", "the brush size must be greater than 0")
    erase = raw.get("erase", False)
    if not isinstance(erase, bool):
        raise check.fail(f"{where}.erase", "expected true or false")
    return Shape(kind, points=check.points(raw.get("points"), f"{where}.points", 1), size=size, erase=erase)


def _pixel_box(check: _Checker, raw, where: str, width: int | None, height: int | None) -> tuple[float, ...]:
    """`box` is [x, y, w, h], normalised when every value is <= 1, else pixels of the layout size."""
    if not isinstance(raw, list) or len(raw) != 4:
        raise check.fail(where, "box must be [x, y, w, h]")
    box = [check.number(v, f"{where}[{i}]") for i, v in enumerate(raw)]
    if max(abs(v) for v in box) > 1.0:
        if not width or not height:
            raise check.fail(where, "a box in pixels needs the layout's width and height")
        box = [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
    return _clip_box(check, tuple(box), where)


def _decode_mask(check: _Checker, raw, where: str) -> torch.Tensor:
    if not isinstance(raw, str):
        raise check.fail(where, "mask must be a PNG as a base64 string (optionally a data: URL)")
    data = raw.split(",", 1)[1] if raw.startswith("data:") else raw
    if len(data) > MAX_MASK_BYTES * 4 // 3 + 4:
        raise check.fail(where, f"embedded mask is larger than {MAX_MASK_BYTES} bytes")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        if max(image.size) > MAX_MASK_SIDE:
            raise check.fail(where, f"embedded mask is {image.size[0]}x{image.size[1]}; at most "
                                    f"{MAX_MASK_SIDE} px per side")
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (binascii.Error, OSError, Image.DecompressionBombError) as err:
        raise check.fail(where, f"cannot decode the embedded mask ({err})") from None
    return torch.from_numpy(grey.copy())


def _parse_region(check: _Checker, raw, where: str, width: int | None, height: int | None) -> RegionSpec:
    if not isinstance(raw, dict):
        raise check.fail(where, "a region must be an object")
    color = check.text(raw.get("color"), f"{where}.color", 32)
    if color and not (len(color) == 7 and color[0] == "#" and all(c in "0123456789abcdefABCDEF" for c in color[1:])):
        raise check.fail(f"{where}.color", f"{json.dumps(color)} is not a #rrggbb colour")
    hidden = raw.get("hidden", False)
    if not isinstance(hidden, bool):
        raise check.fail(f"{where}.hidden", "expected true or false")
    shapes_raw = raw.get("shapes", [])
    if not isinstance(shapes_raw, list):
        raise check.fail(f"{where}.shapes", "expected a list of shapes")
    if len(shapes_raw) > MAX_SHAPES:
        raise check.fail(f"{where}.shapes", f"{len(shapes_raw)} shapes; at most {MAX_SHAPES} per region")
    shapes = [_parse_shape(check, s, f"{where}.shapes[{i}]") for i, s in enumerate(shapes_raw)]
    if raw.get("box") is not None:
        shapes.insert(0, Shape("rect", coords=_pixel_box(check, raw["box"], f"{where}.box", width, height)))
    mask = _decode_mask(check, raw["mask"], f"{where}.mask") if raw.get("mask") is not None else None
    return RegionSpec(
        prompt=check.text(raw.get("prompt"), f"{where}.prompt"),
        name=check.text(raw.get("name"), f"{where}.name", 200),
        color=color.lower(),
        feather=check.number(raw.get("feather", 0.0), f"{where}.feather", lo=0.0, hi=MAX_FEATHER),
        hidden=hidden, mask=mask, shapes=tuple(shapes))


def parse_layout_json(text: str, input_name: str = "editor_state",
                      default_size: tuple[int, int] | None = None) -> LayoutSpec:
    """Parse and validate the JSON; every error is a ValueError naming `input_name` and the bad field.

    Pixel boxes are read against the JSON's width/height, else `default_size` (the node's widgets)."""
    check = _Checker(input_name)
    if not isinstance(text, str) or not text.strip():
        return LayoutSpec()
    if len(text) > MAX_JSON_CHARS:
        raise check.fail("", f"JSON longer than {MAX_JSON_CHARS} characters")
    try:
        raw = json.loads(text, parse_constant=lambda c: float(c))
    except json.JSONDecodeError as err:
        raise check.fail("", f"malformed JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(raw, dict):
        raise check.fail("", "expected a JSON object with a 'regions' list")
    version = raw.get("version", VERSION)
    if version != VERSION:
        raise check.fail("version", f"unknown schema version {json.dumps(version)[:20]}; this pack reads {VERSION}")
    size = [None if raw.get(k) is None else int(check.number(raw[k], k, lo=1, hi=16384)) for k in ("width", "height")]
    regions = raw.get("regions", [])
    if not isinstance(regions, list):
        raise check.fail("regions", "expected a list")
    if len(regions) > MAX_REGIONS:
        raise check.fail("regions", f"{len(regions)} regions; at most {MAX_REGIONS} are supported")
    prompts = {k: check.text(raw[k], k) if k in raw else None for k in ("base_prompt", "background_prompt")}
    box_size = [given or fallback for given, fallback in zip(size, default_size or (None, None))]
    return LayoutSpec(tuple(_parse_region(check, r, f"regions[{i}]", *box_size) for i, r in enumerate(regions)),
                      size[0], size[1], prompts["base_prompt"], prompts["background_prompt"])
