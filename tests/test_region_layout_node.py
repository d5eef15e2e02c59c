"""RL_RegionLayout through the real server's API: editor state and layout_json give the expected masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import graphs

pytestmark = pytest.mark.server

STATE = {
    "version": 1,
    "regions": [
        {
            "name": "sky",
            "prompt": "a blue sky",
            "color": "#3366ff",
            "shapes": [{"type": "rect", "x": 0, "y": 0, "w": 1, "h": 0.25}],
        },
        {
            "name": "cat",
            "prompt": "a cat",
            "color": "#ff6633",
            "shapes": [{"type": "rect", "x": 0.5, "y": 0.5, "w": 0.25, "h": 0.5}],
        },
    ],
}


def layout_prompt(width: int, height: int, *, editor_state: str = "", layout_json: str | None = None) -> dict:
    g = graphs.graph()
    inputs = dict(
        width=width, height=height, base_prompt="a garden", background_prompt="grass", editor_state=editor_state
    )
    if layout_json is not None:
        inputs["layout_json"] = g.node("PrimitiveStringMultiline", value=layout_json).out(0)
    node = g.node("RL_RegionLayout", id="layout", **inputs)
    masks = g.node("MaskToImage", mask=node.out(1))
    g.node("SaveImage", id="masks", images=masks.out(0), filename_prefix="rl_masks")
    g.node("SaveImage", id="preview", images=node.out(2), filename_prefix="rl_preview")
    return g.finalize()


def mask_arrays(server, result) -> list[np.ndarray]:
    return [np.asarray(im.convert("L")) > 127 for im in server.images(result, "masks")]


def test_editor_state_gives_exact_masks(comfy_server):
    result = comfy_server.run(layout_prompt(128, 96, editor_state=json.dumps(STATE)))
    assert result.status == "success", result.error
    sky, cat = mask_arrays(comfy_server, result)
    assert sky.shape == (96, 128)
    assert int(sky.sum()) == 128 * 24 and sky[:24].all()
    assert int(cat.sum()) == 32 * 48 and cat[48:, 64:96].all()
    preview = np.asarray(comfy_server.images(result, "preview")[0].convert("RGB")).astype(int)
    assert preview.shape == (96, 128, 3)
    assert preview[5, 5, 2] > preview[5, 5, 0]  # sky tinted blue
    assert preview[80, 80, 0] > preview[80, 80, 2]  # cat tinted orange
    assert abs(preview[40, 10] - 89).max() <= 1  # uncovered stays grey (0.35)


def test_layout_json_overrides_editor_with_pixel_boxes(comfy_server):
    planner = {
        "width": 128,
        "height": 96,
        "regions": [{"prompt": "a blue sky", "box": [0, 0, 128, 24]}, {"prompt": "a cat", "box": [64, 48, 32, 48]}],
    }
    other = {"version": 1, "regions": [{"prompt": "x", "shapes": [{"type": "rect", "x": 0, "y": 0, "w": 1, "h": 1}]}]}
    drawn = comfy_server.run(layout_prompt(128, 96, editor_state=json.dumps(STATE)))
    given = comfy_server.run(layout_prompt(512, 512, editor_state=json.dumps(other), layout_json=json.dumps(planner)))
    assert given.status == "success", given.error
    for a, b in zip(mask_arrays(comfy_server, drawn), mask_arrays(comfy_server, given), strict=True):
        assert np.array_equal(a, b)


def test_bad_json_is_a_clear_error_and_server_stays_up(comfy_server):
    result = comfy_server.run(layout_prompt(64, 64, editor_state='{"version": 7, "regions": []}'))
    assert result.status == "error"
    message = result.error["exception_message"]
    assert "editor_state" in message and "unknown schema version 7" in message
    result = comfy_server.run(layout_prompt(64, 64, editor_state="{oops"))
    assert result.status == "error" and "malformed JSON" in result.error["exception_message"]
    assert comfy_server.run(layout_prompt(64, 64, editor_state=json.dumps(STATE))).status == "success"


def test_shipped_preview_workflow_api_twin(comfy_server):
    prompt = json.loads((graphs_root() / "workflows" / "api" / "region_layout_preview.json").read_text())
    layout = next(node for node in prompt.values() if node["class_type"] == "RL_RegionLayout")
    assert len(json.loads(layout["inputs"]["editor_state"])["regions"]) == 4
    save = next(key for key, node in prompt.items() if node["class_type"] == "SaveImage")
    result = comfy_server.run(prompt)
    assert result.status == "success", result.error
    (image,) = comfy_server.images(result, save)
    assert image.size == (1024, 768)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert tuple(pixels[380, 520]) == (0xD8, 0xD0, 0xC0)  # uncovered: the EmptyImage colour, untouched
    sky, barn = pixels[100, 500], pixels[380, 200]
    assert sky[2] > sky[0] + 40 and barn[0] > barn[2] + 40  # blue sky, red barn


def graphs_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def color_map_prompt(server, prompts: str) -> dict:
    from PIL import Image

    array = np.zeros((64, 96, 3), dtype=np.uint8)
    array[:32, :24] = (255, 0, 0)
    array[32:, 48:] = (0, 0, 255)
    Image.fromarray(array).save(server.input_dir / "rl_color_map.png")
    g = graphs.graph()
    image = g.node("LoadImage", image="rl_color_map.png")
    node = g.node(
        "RL_RegionsFromColorMap",
        color_map=image.out(0),
        prompts=prompts,
        tolerance=16,
        width=96,
        height=64,
        base_prompt="",
        background_prompt="",
    )
    masks = g.node("MaskToImage", mask=node.out(1))
    g.node("SaveImage", id="masks", images=masks.out(0), filename_prefix="rl_color_masks")
    return g.finalize()


def test_color_map_node_through_the_api(comfy_server):
    result = comfy_server.run(color_map_prompt(comfy_server, "a red kite\na blue car"))
    assert result.status == "success", result.error
    red, blue = mask_arrays(comfy_server, result)
    assert int(red.sum()) == 32 * 24 and red[:32, :24].all()
    assert int(blue.sum()) == 32 * 48 and blue[32:, 48:].all()
    bad = comfy_server.run(color_map_prompt(comfy_server, "only one prompt"))
    assert bad.status == "error"
    assert "color_map: the map has 2 colours" in bad.error["exception_message"]
