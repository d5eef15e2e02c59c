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


QWEN_LORA = "rl_qwen_image_lora.safetensors"
LORA_LAYERS = (  # image-stream, text-stream and per-token outer layers of the one block (none per sample)
    "img_in",
    "txt_in",
    "proj_out",
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.0.img_mlp.net.0.proj",
    "transformer_blocks.0.attn.add_v_proj",
    "transformer_blocks.0.txt_mlp.net.2",
)


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    """The module's server, with the test-only text encoder pack and a Qwen-Image LoRA in ComfyUI's key format."""
    from safetensors import safe_open
    from test_regional_lora_server import lora_tensors

    with safe_open(str(tiny_models / "diffusion_models" / graphs.QWEN_IMAGE_UNET), "pt") as f:
        shapes = {layer: tuple(f.get_slice(f"{layer}.weight").get_shape()) for layer in LORA_LAYERS}
    layers = {f"diffusion_model.{k}": (".lora_up.weight", ".lora_down.weight", v) for k, v in shapes.items()}
    loras = tmp_path_factory.mktemp("qwen_loras")
    safetensors.torch.save_file(lora_tensors(layers, seed=5), str(loras / QWEN_LORA))
    server = start_server(tiny_models, extra_custom_nodes=(TEST_NODES,), extra_model_dirs={"loras": (loras,)})
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


def test_regional_lora_through_the_queue(server):
    """Regional LoRA on Qwen-Image (issue 16 through the server): base_ratio 0 in every block and step, a LoRA on
    region 1 leaves region 2's latent bit-identical and makes region 1 what ComfyUI's LoraLoaderModelOnly gives
    for the whole model, to 1e-3 of the LoRA's effect there (merged W + s·B·A against the runtime W·x + s·B(A·x):
    the same sums in another order); strength 0 changes nothing."""
    plain = latent(server, qwen(seed=3, **ISOLATED))
    ours = latent(server, qwen(seed=3, regional_loras=[(QWEN_LORA, 1.0, "1")], **ISOLATED))
    merged = latent(server, qwen(seed=3, loras_before=[(QWEN_LORA, 1.0)], **ISOLATED))
    assert torch.equal(ours[TOP_RIGHT], plain[TOP_RIGHT])
    assert not torch.equal(merged[TOP_RIGHT], plain[TOP_RIGHT])  # merged: every region
    effect = (merged[LEFT] - plain[LEFT]).abs().max()
    error = (ours[LEFT] - merged[LEFT]).abs().max()
    print(f"Qwen-Image regional LoRA, region 1: off by {float(error):.2e}, the LoRA's effect {float(effect):.3f}")
    assert effect > 0.05, "the LoRA changed (almost) nothing"
    assert error <= 1e-3 * effect
    assert torch.equal(latent(server, qwen(seed=3, regional_loras=[(QWEN_LORA, 0.0, "1")], **ISOLATED)), plain)
