"""Regional prompting on Qwen-Image through the real ComfyUI server: the tiny Qwen-Image (1 transformer block at
full width, as ComfyUI's UNETLoader detects Qwen-Image), its template's ModelSamplingAuraFlow and Wan 2.1 VAE, the
Regional FLUX Patch node, KSampler, 2 steps. Qwen-Image's text encoder is Qwen2.5-VL 7B (16 GB): here the test-only
RLTest_QwenImageTextStandIn (tests/support/custom_nodes/rl_test_text_stand_ins) gives ComfyUI's own Qwen-Image
text encoder with 1 layer at the real width, so the real tokenizer and chat template run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import start_server
from rl_devkit.demo import TEST_NODES, shrink_for_tiny_models, use_text_encoder_stand_ins
from support import graphs
from support.workflows import check_ui_matches_api

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SIZE = dict(width=112, height=72)  # not multiples of 16: latent 9 x 14, 5 x 7 tokens
LEFT = (..., slice(None, 6))  # latent columns 0-5: token columns 0-2, all inside region 1 (the left half)
TOP_RIGHT = (..., slice(None, 4), slice(8, None))  # latent rows 0-3, columns 8-13: tokens inside region 2
ISOLATED = dict(base_ratio=0.0, control_steps=10, save_latent=True)


@pytest.fixture(scope="module")
def server(tiny_models):
    server = start_server(tiny_models, extra_custom_nodes=(TEST_NODES,))
    yield server
    server.cleanup()


def qwen(**kwargs) -> dict:
    return graphs.regional_qwen_image(**{**SIZE, **kwargs})


def run(server, prompt: dict):
    result = server.run(prompt)
    assert result.status == "success", result.error
    return result


def images(server, result) -> list[np.ndarray]:
    return [np.asarray(image).astype(np.int16) for image in server.images(result, "save")]


def image(server, prompt: dict) -> np.ndarray:
    return images(server, run(server, prompt))[0]


def latent(server, prompt: dict) -> torch.Tensor:
    entry = run(server, prompt).outputs["save_latent"]["latents"][0]
    return safetensors.torch.load_file(str(server.output_dir / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def test_plain_regional_plain_and_off_switches(server):
    """The node takes a Qwen-Image model; regional output differs from plain; base_ratio 1 and 0 control steps give
    the plain image exactly; the plain model is untouched afterwards (the last plain run samples again: picking
    item 0 of the batch of 1 changes the cache key, not the noise)."""
    assert "RLTest_QwenImageTextStandIn" in server.object_info(), "the test-only text encoder pack did not load"
    plain = image(server, qwen(patch=False))
    assert np.abs(image(server, qwen()) - plain).max() > 0, "regional prompting changed nothing"
    assert np.array_equal(image(server, qwen(base_ratio=1.0)), plain)
    assert np.array_equal(image(server, qwen(control_steps=0)), plain)
    assert np.array_equal(image(server, qwen(patch=False, batch_index=0)), plain)


@pytest.mark.parametrize(
    "changed, kept, other",
    [
        (("a red apple", "a green glass bottle"), LEFT, TOP_RIGHT),
        (("a yellow banana", "a blue ceramic cup"), TOP_RIGHT, LEFT),
    ],
    ids=["region2", "region1"],
)
def test_region_isolation_through_the_sampler(server, changed, kept, other):
    """base_ratio 0, every block and step: changing one region's prompt leaves the other region's sampled latent
    bit-identical and changes its own. (No CFG here: the negative pass is plain Qwen-Image over the whole picture,
    which carries the change into the other region from the second step on.)"""
    first = latent(server, qwen(prompts=("a red apple", "a blue ceramic cup"), **ISOLATED))
    second = latent(server, qwen(prompts=changed, **ISOLATED))
    assert first.shape == (1, 16, 1, 9, 14)
    assert torch.equal(first[kept], second[kept])
    assert not torch.equal(first[other], second[other])


def test_batch_with_cfg_and_a_negative_prompt(server):
    """A batch of 2 with CFG and a negative prompt, at a size that is not a multiple of 16 px: both items are
    regional (they differ from the plain batch) and the second equals its batch-1 run (with the noise it has in
    the batch; the model-level tests check the rows to 1e-5)."""
    common = dict(cfg=2.5, negative="blurry, low quality")
    both = images(server, run(server, qwen(batch=2, **common)))
    plain = images(server, run(server, qwen(batch=2, patch=False, **common)))
    assert len(both) == 2 and both[0].shape == (72, 112, 3)
    assert all(np.abs(ours - theirs).max() > 0 for ours, theirs in zip(both, plain))
    single = image(server, qwen(batch=2, batch_index=1, **common))
    assert np.abs(single - both[1]).max() <= 1, "the second item differs from its batch-1 run"


def test_shipped_qwen_image_workflow(server):
    """workflows/regional_qwen_image.json matches its API twin and has a thumbnail; the twin runs, shrunk for the
    tiny models, with the test-only text encoder stand-in in place of its CLIPLoader (Qwen2.5-VL 7B)."""
    ui = json.loads((WORKFLOWS / "regional_qwen_image.json").read_text())
    api = json.loads((WORKFLOWS / "api" / "regional_qwen_image.json").read_text())
    assert (WORKFLOWS / "regional_qwen_image.jpg").stat().st_size > 1000
    check_ui_matches_api(server.object_info(), ui, api)
    loader = next(node for node in api.values() if node["class_type"] == "CLIPLoader")
    assert loader["inputs"]["type"] == "qwen_image"
    shrunk = use_text_encoder_stand_ins(shrink_for_tiny_models(api))
    assert not any(node["class_type"] == "CLIPLoader" for node in shrunk.values())
    result = run(server, shrunk)
    assert len([node for node, out in result.outputs.items() if out.get("images")]) >= 2
