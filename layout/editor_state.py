"""The region editor's JSON state (and the hand-written / LLM layout JSON): parse, validate, rasterise.

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
(consumers soften at their own grid, sigma = feather / 2); `feathered_masks` applies it for previews.
Plain torch + pillow: nothing here imports ComfyUI.
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
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .regions import MAX_REGIONS, Region, RegionLayout, check_layout_size

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


def gaussian_feather(mask: torch.Tensor, feather: float) -> torch.Tensor:
    """Blur a [H, W] mask with sigma = feather / 2 pixels (the same convention the regional nodes use)."""
    if feather <= 0:
        return mask
    sigma = feather / 2
    radius = max(1, min(int(math.ceil(3 * sigma)), max(mask.shape) - 1))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = mask[None, None].float()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[0, 0].clamp(0, 1)


def feathered_masks(layout: RegionLayout) -> torch.Tensor:
    """[R, H, W]: each region's mask with its own feather applied (for MASK outputs and previews)."""
    if not layout.regions:
        return layout.masks()
    return torch.stack([gaussian_feather(r.mask, r.feather) for r in layout.regions])


def layout_preview(layout: RegionLayout, opacity: float = 0.6) -> torch.Tensor:
    """[1, H, W, 3] colour-coded picture of the (feathered) regions over mid grey; uncovered stays grey."""
    from dataclasses import replace

    from .overlay import overlay_regions

    soft = feathered_masks(layout)
    shown = layout.with_regions(tuple(replace(r, mask=m) for r, m in zip(layout.regions, soft)))
    grey = torch.full((1, layout.height, layout.width, 3), 0.35)
    return overlay_regions(grey, shown, opacity)


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
