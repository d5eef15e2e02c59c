"""Region editor JSON: schema validation and rasterisation (exact pixel counts for simple shapes)."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from regional_layout.layout.color_map import layout_from_color_map
from regional_layout.layout.feather import feather_mask, feathered_masks, gaussian_blur
from regional_layout.layout.layout_json import parse_layout_json
from regional_layout.layout.rasterize import build_layout

pytestmark = pytest.mark.pure


def layout_of(state: dict, width: int, height: int, **kwargs):
    return build_layout(parse_layout_json(json.dumps(state)), width, height, **kwargs)


def one_region(*shapes, **region) -> dict:
    return {"version": 1, "regions": [{"prompt": "p", **region, "shapes": list(shapes)}]}


def png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("width, height", [(64, 64), (128, 96), (96, 160), (200, 120)])
def test_rect_covers_exact_pixels(width, height):
    rect = {"type": "rect", "x": 0.25, "y": 0.5, "w": 0.5, "h": 0.25}
    mask = layout_of(one_region(rect), width, height).regions[0].mask
    assert mask.shape == (height, width)
    assert int(mask.sum()) == (width // 2) * (height // 4)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert (int(xs.min()), int(xs.max()) + 1) == (width // 4, 3 * width // 4)
    assert (int(ys.min()), int(ys.max()) + 1) == (height // 2, 3 * height // 4)
    assert set(mask.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("width, height", [(256, 256), (256, 128)])
def test_ellipse_area_close_to_pi_ab(width, height):
    ellipse = {"type": "ellipse", "x": 0.25, "y": 0.25, "w": 0.5, "h": 0.5}
    area = float(layout_of(one_region(ellipse), width, height).regions[0].mask.sum())
    expected = math.pi * (width / 4) * (height / 4)
    assert abs(area - expected) / expected < 0.03


def test_polygon_triangle_area():
    triangle = {"type": "polygon", "points": [[0, 0], [1, 0], [0, 1]]}
    area = float(layout_of(one_region(triangle), 100, 100).regions[0].mask.sum())
    assert abs(area - 5000) < 150  # half the picture, plus the diagonal's boundary pixels


def test_stroke_and_eraser():
    stroke = {"type": "stroke", "points": [[0.25, 0.5], [0.75, 0.5]], "size": 0.1}
    painted = layout_of(one_region(stroke), 200, 100).regions[0].mask
    expected = 100 * 20 + math.pi * 10 ** 2  # a 100 x 20 px band with round caps
    assert abs(float(painted.sum()) - expected) / expected < 0.05
    assert painted[50, 60] == 1 and painted[50, 20] == 0 and painted[35, 100] == 0
    eraser = {"type": "stroke", "points": [[0.5, 0.0], [0.5, 1.0]], "size": 0.1, "erase": True}
    erased = layout_of(one_region(stroke, eraser), 200, 100).regions[0].mask
    assert erased[:, 91:110].sum() == 0
    assert float(erased.sum()) < float(painted.sum()) - 19 * 20 + 1
    assert torch.equal(erased[:, :80], painted[:, :80])


def test_single_point_stroke_is_a_dot():
    dot = {"type": "stroke", "points": [[0.5, 0.5]], "size": 0.2}
    area = float(layout_of(one_region(dot), 100, 100).regions[0].mask.sum())
    assert abs(area - math.pi * 100) / (math.pi * 100) < 0.1


def test_eraser_only_clears_its_own_region():
    full = {"type": "rect", "x": 0, "y": 0, "w": 1, "h": 1}
    eraser = {"type": "stroke", "points": [[0, 0.5], [1, 0.5]], "size": 0.2, "erase": True}
    state = {"version": 1, "regions": [{"prompt": "a", "shapes": [full, eraser]}, {"prompt": "b", "shapes": [full]}]}
    layout = layout_of(state, 50, 50)
    assert layout.regions[0].mask.sum() < 50 * 50
    assert layout.regions[1].mask.sum() == 50 * 50


def test_box_in_pixels_and_normalised_are_the_same():
    pixels = {"version": 1, "width": 200, "height": 100, "regions": [{"prompt": "a", "box": [20, 10, 100, 50]}]}
    norm = {"version": 1, "regions": [{"prompt": "a", "box": [0.1, 0.1, 0.5, 0.5]}]}
    a, b = layout_of(pixels, 200, 100), layout_of(norm, 200, 100)
    assert torch.equal(a.regions[0].mask, b.regions[0].mask)
    assert int(a.regions[0].mask.sum()) == 100 * 50
    assert a.boxes() == [(0.1, 0.1, 0.5, 0.5)]


def test_pixel_box_without_size_in_json_uses_the_node_size():
    spec = parse_layout_json('{"regions": [{"prompt": "a", "box": [20, 10, 100, 50]}]}', default_size=(200, 100))
    assert int(build_layout(spec, 200, 100).regions[0].mask.sum()) == 100 * 50


def test_box_outside_is_clipped_with_warning(caplog):
    state = {"version": 1, "regions": [{"prompt": "a", "box": [0.5, 0.5, 1.0, 1.0]}]}
    mask = layout_of(state, 40, 40).regions[0].mask
    assert int(mask.sum()) == 20 * 20
    assert "clipped" in caplog.text


def test_embedded_mask_is_stretched_and_shapes_add_to_it():
    array = np.zeros((10, 20), dtype=np.uint8)
    array[:, :10] = 255  # left half
    rect = {"type": "rect", "x": 0.75, "y": 0, "w": 0.25, "h": 1}
    mask = layout_of(one_region(rect, mask=png_b64(array)), 40, 20).regions[0].mask
    assert int(mask[:, :19].sum()) == 19 * 20 and int(mask[:, 21:30].sum()) == 0
    assert int(mask[:, 30:].sum()) == 10 * 20


def test_region_fields_and_prompts():
    state = {"version": 1, "base_prompt": "a park", "regions": [
        {"name": "dog", "prompt": "<b>a dog</b>", "color": "#FF0000", "feather": 4, "hidden": True, "shapes": []}]}
    layout = layout_of(state, 32, 32, base_prompt="ignored", background_prompt="grass")
    region = layout.regions[0]
    assert (region.name, region.prompt, region.color, region.feather) == ("dog", "<b>a dog</b>", "#ff0000", 4.0)
    assert (layout.base_prompt, layout.background_prompt) == ("a park", "grass")
    assert region.mask.sum() == 0


def test_empty_state_is_an_empty_layout():
    layout = build_layout(parse_layout_json(""), 64, 32)
    assert layout.regions == () and layout.masks().shape == (0, 32, 64)


def test_feather_blurs_and_keeps_mass():
    rect = {"type": "rect", "x": 0.25, "y": 0.25, "w": 0.5, "h": 0.5}
    layout = layout_of(one_region(rect, feather=8), 64, 64)
    hard = layout.regions[0].mask
    soft = feathered_masks(layout)[0]
    assert set(hard.unique().tolist()) == {0.0, 1.0}  # the Region keeps the hard mask and the feather value
    assert 0 < float(soft[32, 14]) < 1 and 0 < float(soft[32, 17]) < 1
    assert abs(float(soft.sum()) - float(hard.sum())) < 1.0
    assert float(soft[32, 32]) == pytest.approx(1.0)
    assert torch.equal(feather_mask(hard, 0), hard)


@pytest.mark.parametrize("text, message", [
    ("{not json", "malformed JSON"),
    ('{"version": 2, "regions": []}', "unknown schema version 2"),
    ('{"regions": {}}', "regions: expected a list"),
    ('{"regions": [{"prompt": "a", "box": [0, 0, 0, 0.5]}]}', "zero or negative area"),
    ('{"regions": [{"prompt": "a", "box": [2, 2, 0.5, 0.5]}]}', "needs the layout's width and height"),
    ('{"regions": [{"prompt": "a", "box": [1.5, 0, 0.5, 0.5]}]}', "needs the layout's width and height"),
    ('{"regions": [{"prompt": "a", "shapes": [{"type": "rect", "x": NaN, "y": 0, "w": 1, "h": 1}]}]}',
     "NaN or infinite"),
    ('{"regions": [{"prompt": "a", "shapes": [{"type": "rect", "x": 0, "y": 0, "w": Infinity, "h": 1}]}]}',
     "NaN or infinite"),
    ('{"regions": [{"prompt": "a", "shapes": [{"type": "circle"}]}]}', "unknown shape type"),
    ('{"regions": [{"prompt": "a", "shapes": [{"type": "stroke", "points": [[0, 0]], "size": 0}]}]}',
     "brush size"),
    ('{"regions": [{"prompt": "a", "shapes": [{"type": "polygon", "points": [[0, 0], [1, 1]]}]}]}',
     "at least 3"),
    ('{"regions": [{"prompt": "a", "color": "red"}]}', "not a #rrggbb colour"),
    ('{"regions": [{"prompt": 5}]}', "expected a string"),
    ('{"regions": [{"prompt": "a", "feather": -1}]}', "outside"),
    ('{"regions": [{"prompt": "a", "mask": "!!!"}]}', "cannot decode"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_input_names_the_input_and_field(text, message):
    with pytest.raises(ValueError) as info:
        parse_layout_json(text, input_name="layout_json")
    assert str(info.value).startswith("layout_json:")
    assert message in str(info.value)


def test_too_many_regions():
    state = {"version": 1, "regions": [{"prompt": str(i)} for i in range(257)]}
    with pytest.raises(ValueError, match="257 regions; at most 256"):
        parse_layout_json(json.dumps(state))


def test_oversized_embedded_mask():
    big = png_b64(np.zeros((8, 2049), dtype=np.uint8))
    with pytest.raises(ValueError, match="at most 2048 px per side"):
        parse_layout_json(json.dumps(one_region(mask=big)))


def test_box_entirely_outside():
    with pytest.raises(ValueError, match="entirely outside"):
        parse_layout_json('{"regions": [{"prompt": "a", "box": [1.0, 0, 0.5, 0.5]}]}')


def color_map(width: int, height: int) -> torch.Tensor:
    """Black background, a red block top-left, a blue block bottom-right ([1, H, W, 3])."""
    image = torch.zeros(1, height, width, 3)
    image[0, : height // 2, : width // 4] = torch.tensor([1.0, 0.0, 0.0])
    image[0, height // 2:, width // 2:] = torch.tensor([0.0, 0.0, 1.0])
    return image


@pytest.mark.parametrize("width, height", [(64, 64), (96, 48), (40, 120)])
def test_color_map_regions_exact(width, height):
    layout = layout_from_color_map(color_map(width, height), ["red thing", "blue thing"], width=width, height=height)
    red, blue = layout.regions
    assert (red.prompt, red.color, blue.color) == ("red thing", "#ff0000", "#0000ff")
    assert int(red.mask.sum()) == (height // 2) * (width // 4)
    assert int(blue.mask.sum()) == (height - height // 2) * (width - width // 2)


def test_color_map_tolerance_absorbs_noise_and_resizes():
    image = color_map(64, 64)
    noise = torch.Generator().manual_seed(0)
    noisy = (image + (torch.rand(image.shape, generator=noise) - 0.5) * 12 / 255).clamp(0, 1)
    layout = layout_from_color_map(noisy, ["r", "b"], width=128, height=128, tolerance=16)
    assert [int(r.mask.sum()) for r in layout.regions] == [4 * 32 * 16, 4 * 32 * 32]
    with pytest.raises(ValueError, match="color_map: more than 256 colours"):  # no tolerance: noise is colours
        layout_from_color_map(noisy, ["r", "b"], width=64, height=64, tolerance=0)


def test_color_map_with_more_colours_than_prompts():
    with pytest.raises(ValueError, match="color_map: the map has 2 colours .* but there are 1 prompts"):
        layout_from_color_map(color_map(32, 32), ["only one"], width=32, height=32)


def test_feather_is_the_same_gaussian_at_every_mask_size():
    """The kernel reaches 3 sigma even past a small mask's edge (edges repeat): no narrower blur on small masks."""
    small = torch.zeros(6, 6)
    small[:, :3] = 1
    big = torch.nn.functional.pad(small[None, None], (40, 40, 40, 40), mode="replicate")[0, 0]
    blurred = gaussian_blur(small, 4.0)
    torch.testing.assert_close(blurred, gaussian_blur(big, 4.0)[40:46, 40:46], atol=1e-6, rtol=0)
    assert 0 < float(blurred.min()) and float(blurred.max()) <= 1
