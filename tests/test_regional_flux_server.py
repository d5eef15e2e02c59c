"""Regional FLUX through the real ComfyUI server on the tiny FLUX (1 double + 1 single block), 2 steps.

Tests 1, 4, 5 and 6 of the issue at the sampler level, the bad-input rules, and the shipped workflow's API twin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rl_devkit.demo import shrink_for_tiny_models
from rl_devkit.server import PromptRejected
from support import graphs
from support.workflows import check_ui_matches_api

pytestmark = pytest.mark.server

SIZE = dict(width=112, height=72)  # not multiples of 16: latent 9 x 14 (FLUX pads it), 5 x 7 tokens
WORKFLOW_API = Path(__file__).resolve().parents[1] / "workflows" / "api" / "regional_flux.json"


def image(server, prompt: dict, node: str = "save", index: int = 0):
    result = server.run(prompt)
    assert result.status == "success", result.error
    return np.asarray(server.images(result, node)[index]).astype(np.int16), result


def test_plain_regional_plain_and_off_switch(comfy_server):
    """Test 4: plain → regional → plain gives identical plain images (the input model is untouched; the last
    plain run really samples again). Test 1: base_ratio 1 gives the plain image exactly."""
    plain, _ = image(comfy_server, graphs.regional_flux(patch=False, **SIZE))
    regional, _ = image(comfy_server, graphs.regional_flux(**SIZE))
    assert np.abs(regional - plain).max() > 0, "regional prompting changed nothing"
    off, _ = image(comfy_server, graphs.regional_flux(base_ratio=1.0, **SIZE))
    assert np.array_equal(off, plain)  # zero steps / no blocks: bit-identical in the unit tests
    # Same conditioning (a trailing space tokenizes the same) but a new cache key: the sampler runs again on the
    # same cached UNETLoader model that the patcher received.
    again, result = image(comfy_server, graphs.regional_flux(patch=False, base_prompt=graphs.regional_flux.__kwdefaults__
                                                             ["base_prompt"] + " ", **SIZE))
    assert "sampler" in result.executed_nodes
    assert np.array_equal(again, plain)


def test_batch_and_negative(comfy_server):
    """Test 5: with CFG and a negative prompt, a batch of 2 equals batch-1 runs (each item with the noise it has
    in the batch; the second item is checked here, both rows bit-near in the unit tests). The negative pass is plain FLUX: checked bit for bit in the unit tests."""
    common = dict(cfg=2.0, negative="blurry, low quality", seed=7, **SIZE)
    result = comfy_server.run(graphs.regional_flux(batch=2, **common))
    assert result.status == "success", result.error
    both = [np.asarray(im).astype(np.int16) for im in comfy_server.images(result, "save")]
    assert len(both) == 2
    single, _ = image(comfy_server, graphs.regional_flux(batch=2, batch_index=1, **common))
    assert np.abs(single - both[1]).max() <= 1, "the second item differs from its batch-1 run"
    assert np.abs(both[0] - both[1]).max() > 0


def test_changes_take_effect_and_cache_serves_repeats(comfy_server):
    """Test 6: a changed region prompt or mask changes the output on the next queue (no stale mask), and an
    unchanged prompt is served from ComfyUI's cache."""
    first, _ = image(comfy_server, graphs.regional_flux(seed=3, **SIZE))
    reprompted, _ = image(comfy_server, graphs.regional_flux(seed=3, prompts=("a green pear", "a blue ceramic cup"),
                                                             **SIZE))
    assert np.abs(reprompted - first).max() > 0
    moved, _ = image(comfy_server, graphs.regional_flux(seed=3, boxes=[(0, 0, 48, 72), (48, 32, 64, 40)], **SIZE))
    assert np.abs(moved - first).max() > 0
    repeat, result = image(comfy_server, graphs.regional_flux(seed=3, boxes=[(0, 0, 48, 72), (48, 32, 64, 40)],
                                                              **SIZE))
    assert "sampler" in result.cached_nodes and "sampler" not in result.executed_nodes
    assert np.array_equal(repeat, moved)


def error_text(server, prompt: dict) -> str:
    try:
        result = server.run(prompt)
    except PromptRejected as err:
        return err.text()
    assert result.status == "error", "the bad input was accepted"
    return json.dumps(result.error)


@pytest.mark.parametrize("change, expected", [
    (dict(double_blocks="0-x"), "double_blocks"),
    (dict(single_blocks="5"), "single_blocks"),
    (dict(base_ratio=1.5), "base_ratio"),
    (dict(prompts=("", "")), "prompt"),
    (dict(background_prompt="", mask_value=0.0), "non-empty mask"),
], ids=["double-blocks", "single-blocks", "beta", "no-prompts", "empty-masks"])
def test_bad_input_gives_a_clear_error(comfy_server, change, expected):
    text = error_text(comfy_server, graphs.regional_flux(**{**SIZE, **change}))
    assert expected in text, text
    assert comfy_server.alive


def test_sd_latent_is_rejected(comfy_server):
    """A (non-empty) SD1.5 latent: ComfyUI only converts empty latents to the model's channels."""
    prompt = graphs.regional_flux(**SIZE)
    prompt["sd15"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": graphs.SD15}}
    prompt["grey"] = {"class_type": "EmptyImage", "inputs": {"width": 112, "height": 72, "batch_size": 1,
                                                              "color": 0x808080}}
    prompt["sd_latent"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["grey", 0], "vae": ["sd15", 2]}}
    prompt["sampler"]["inputs"]["latent_image"] = ["sd_latent", 0]
    text = error_text(comfy_server, prompt)
    assert "16-channel latent" in text, text


def test_non_flux_model_is_rejected_and_server_carries_on(comfy_server):
    prompt = graphs.regional_flux(**SIZE)
    prompt["sdxl"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": graphs.SDXL}}
    patch = next(k for k, v in prompt.items() if v["class_type"] == "RL_RegionalFluxPatch")
    prompt[patch]["inputs"]["model"] = ["sdxl", 0]
    text = error_text(comfy_server, prompt)
    assert "not support" in text and "FLUX.1, Chroma" in text and "model" in text, text
    after, _ = image(comfy_server, graphs.regional_flux(seed=11, **SIZE))
    assert after.shape == (72, 112, 3)


@pytest.mark.slow
def test_shipped_workflow_api_twin(comfy_server):
    """The example workflow (real T5 through DualCLIPLoader) runs, shrunk for the tiny models."""
    prompt = shrink_for_tiny_models(json.loads(WORKFLOW_API.read_text()))
    result = comfy_server.run(prompt, timeout=1500)
    assert result.status == "success", result.error
    saved = [node for node, out in result.outputs.items() if out.get("images")]
    assert len(saved) >= 2  # the picture and the region overlay


def test_ui_workflow_matches_its_api_twin(comfy_server):
    """workflows/regional_flux.json (UI format) holds the same nodes, links and widget values as the API twin,
    in the widget order /object_info gives, and has a thumbnail."""
    ui = json.loads(WORKFLOW_API.parents[1].joinpath("regional_flux.json").read_text())
    assert WORKFLOW_API.parents[1].joinpath("regional_flux.jpg").stat().st_size > 1000
    check_ui_matches_api(comfy_server.object_info(), ui, json.loads(WORKFLOW_API.read_text()))
