"""Regional prompting on Qwen-Image through the real ComfyUI server: the tiny Qwen-Image (1 transformer block at
full width, as ComfyUI's UNETLoader detects Qwen-Image), its template's ModelSamplingAuraFlow and Wan 2.1 VAE, the
Regional FLUX Patch node, KSampler, 2 steps. Qwen-Image's text encoder is Qwen2.5-VL 7B (16 GB): here the test-only
RLTest_QwenImageTextStandIn (tests/support/custom_nodes/rl_test_text_stand_ins) gives ComfyUI's own Qwen-Image
text encoder with 1 layer at the real width, so the real tokenizer and chat template run."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from conftest import start_server
from rl_devkit.demo import TEST_NODES
from support import graphs
from support.family_server import (
    ISOLATED,
    ISOLATION_CASES,
    check_batch_with_cfg,
    check_isolation,
    check_off_switches,
    check_shipped_workflow,
    latent,
)

pytestmark = pytest.mark.server

SIZE = dict(width=112, height=72)  # not multiples of 16: latent 9 x 14, 5 x 7 tokens
LEFT = (..., slice(None, 6))  # latent columns 0-5: token columns 0-2, all inside region 1 (the left half)
TOP_RIGHT = (..., slice(None, 4), slice(8, None))  # latent rows 0-3, columns 8-13: tokens inside region 2
KEPT = dict(region2=(LEFT, TOP_RIGHT), region1=(TOP_RIGHT, LEFT))  # (the pixels kept, the pixels changed)


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


def test_plain_regional_plain_and_off_switches(server):
    """The node takes a Qwen-Image model; regional output differs from plain; the off switches give the plain image
    exactly; the plain model is untouched afterwards."""
    assert "RLTest_QwenImageTextStandIn" in server.object_info(), "the test-only text encoder pack did not load"
    check_off_switches(server, qwen)


@pytest.mark.parametrize("case", list(ISOLATION_CASES))
def test_region_isolation_through_the_sampler(server, case):
    """base_ratio 0, every block and step: changing one region's prompt leaves the other region's sampled latent
    bit-identical and changes its own. (No CFG here: the negative pass is plain Qwen-Image over the whole picture,
    which carries the change into the other region from the second step on.)"""
    check_isolation(server, qwen, ISOLATION_CASES[case], *KEPT[case], shape=(1, 16, 1, 9, 14))


def test_batch_with_cfg_and_a_negative_prompt(server):
    """A batch of 2 with CFG and a negative prompt, at a size that is not a multiple of 16 px."""
    check_batch_with_cfg(server, qwen, shape=(72, 112, 3))


def test_shipped_qwen_image_workflow(server):
    """workflows/regional_qwen_image.json, with the stand-in in place of its CLIPLoader (Qwen2.5-VL 7B)."""
    check_shipped_workflow(server, "regional_qwen_image", "qwen_image")


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
