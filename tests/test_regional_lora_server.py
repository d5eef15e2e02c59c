"""Regional LoRA through the real server: tiny LoRA files in two real key formats (ComfyUI's own
`diffusion_model.<layer>.lora_up/lora_down` and diffusers' `transformer.<block>.attn.to_q.lora_A/lora_B`, which
ComfyUI maps onto slices of FLUX's fused layers), written by this module into its own loras folder, against
ComfyUI's LoraLoaderModelOnly.

Layout (128 x 96 px, token-aligned): region 1 the left half, region 2 the top right quarter, the background the
rest; base_ratio 0 in every block of every step, so each region's latent depends only on that region.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from support import graphs
from test_lsregen_server import saved_latent

pytestmark = pytest.mark.server

SIZE = dict(width=128, height=96)
BOXES = [(0, 0, 64, 96), (64, 0, 64, 48)]
ISOLATED = dict(
    base_ratio=0.0, control_steps=10, double_blocks="all", single_blocks="all", boxes=BOXES, save_latent=True, **SIZE
)
NATIVE, DIFFUSERS, OTHER, WRONG = (
    "rl_native_lora.safetensors",
    "rl_diffusers_lora.safetensors",
    "rl_other_lora.safetensors",
    "rl_wrong_size_lora.safetensors",
)
NATIVE_LAYERS = (
    "double_blocks.0.img_attn.qkv",
    "double_blocks.0.img_attn.proj",
    "double_blocks.0.img_mlp.0",
    "double_blocks.0.txt_attn.qkv",
    "double_blocks.0.txt_mlp.2",
    "single_blocks.0.linear1",
    "single_blocks.0.linear2",
    "final_layer.linear",
)
# Region latents against ComfyUI's merged LoRA, relative to the LoRA's own effect there. ComfyUI merges
# W + s·B·A once (float32 intermediate); the runtime adds s·B(A·x) to W·x: the same sums in another order, a few
# float32 ulps per patched layer (the tiny model computes in float32 on the CPU). Measured: max error ~1e-5 against
# an effect of 5-15 (1e-6 relative); a LoRA on the wrong region, or missing, is off by 100 %. A bfloat16 run would
# need ~2^-8 per layer instead.
REL_TOL = 1e-3


def lora_tensors(names: dict, seed: int, rank: int = 4) -> dict:
    """names: LoRA key prefix -> (up key suffix, down key suffix, model weight shape [out, in])."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, (up, down, (o, i)) in names.items():
        out[f"{prefix}{up}"] = (torch.randn(o, rank, generator=gen) / math.sqrt(rank)).to(torch.bfloat16)
        out[f"{prefix}{down}"] = (torch.randn(rank, i, generator=gen) / math.sqrt(i)).to(torch.bfloat16)
        out[f"{prefix}.alpha"] = torch.tensor(float(rank))
    return out


@pytest.fixture(scope="module")
def lora_server(tiny_models, tmp_path_factory):
    """A server whose loras folder also holds this module's LoRA files."""
    import safetensors.torch
    from conftest import start_server
    from safetensors import safe_open

    folder = tmp_path_factory.mktemp("loras")
    with safe_open(str(tiny_models / "diffusion_models" / graphs.FLUX_UNET), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    hidden = shapes["img_in.weight"][0]
    native = {
        f"diffusion_model.{layer}": (".lora_up.weight", ".lora_down.weight", shapes[f"{layer}.weight"])
        for layer in NATIVE_LAYERS
    }
    mlp = shapes["double_blocks.0.img_mlp.0.weight"][0]
    diffusers_shapes = {  # [out, in] of each diffusers layer (the attention ones are slices of fused layers)
        "transformer_blocks.0.attn.to_q": (hidden, hidden),
        "transformer_blocks.0.attn.to_v": (hidden, hidden),
        "transformer_blocks.0.attn.add_k_proj": (hidden, hidden),
        "transformer_blocks.0.ff.net.0.proj": (mlp, hidden),
        "single_transformer_blocks.0.attn.to_k": (hidden, hidden),
        "single_transformer_blocks.0.proj_out": shapes["single_blocks.0.linear2.weight"],
    }
    diffusers = {
        f"transformer.{layer}": (".lora_B.weight", ".lora_A.weight", shape) for layer, shape in diffusers_shapes.items()
    }
    safetensors.torch.save_file(lora_tensors(native, 1), str(folder / NATIVE))
    safetensors.torch.save_file(lora_tensors(diffusers, 2), str(folder / DIFFUSERS))
    safetensors.torch.save_file(lora_tensors(native, 3), str(folder / OTHER))
    wrong = {f"diffusion_model.{NATIVE_LAYERS[0]}": (".lora_up.weight", ".lora_down.weight", (3 * 64, 64))}
    safetensors.torch.save_file(lora_tensors(wrong, 4), str(folder / WRONG))
    server = start_server(tiny_models, extra_model_dirs={"loras": (folder,)})
    yield server
    server.cleanup()


def latent(server, prompt) -> torch.Tensor:
    result = server.run(prompt)
    assert result.status == "success", result.error
    return saved_latent(server, result, "save_latent").float()


def regions(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Region 1's and region 2's latent pixels (8 px per latent pixel)."""
    return x[..., :, :8], x[..., :6, 8:]


def assert_matches(ours, merged, plain, what):
    err = (ours - merged).abs().max()
    effect = (merged - plain).abs().max()
    assert effect > 0.05, f"{what}: the LoRA changed (almost) nothing"
    assert err <= REL_TOL * effect, f"{what}: off by {float(err):.4f}, the LoRA's effect is {float(effect):.4f}"


def test_region_isolated_matches_loraloader_and_strength_zero(lora_server):
    """Tests 1-3 through the queue: plain, regional LoRA, plain again (nothing stays behind)."""
    plain = latent(lora_server, graphs.regional_flux(seed=1, **ISOLATED))
    for name in (NATIVE, DIFFUSERS):
        ours = latent(lora_server, graphs.regional_flux(seed=1, regional_loras=[(name, 1.0, "1")], **ISOLATED))
        merged = latent(lora_server, graphs.regional_flux(seed=1, loras_before=[(name, 1.0)], **ISOLATED))
        assert torch.equal(regions(ours)[1], regions(plain)[1]), name
        assert_matches(regions(ours)[0], regions(merged)[0], regions(plain)[0], name)
        assert not torch.allclose(regions(merged)[1], regions(plain)[1], atol=0.05)  # merged: every region
    zero = latent(lora_server, graphs.regional_flux(seed=1, regional_loras=[(NATIVE, 0.0, "1")], **ISOLATED))
    assert torch.equal(zero, plain)
    assert torch.equal(latent(lora_server, graphs.regional_flux(seed=1, **ISOLATED)), plain)
    log = lora_server.log_text()
    assert "lora key not loaded" not in log


def test_two_regions_and_a_global_lora(lora_server):
    """Test 4: LoRA A on region 1, B on region 2, the shared tiny LoRA globally (LoraLoaderModelOnly)."""
    common = dict(seed=2, loras_before=[(graphs.FLUX_LORA, 1.0)], **ISOLATED)
    ours = latent(lora_server, graphs.regional_flux(regional_loras=[(NATIVE, 1.0, "1"), (OTHER, 0.8, "2")], **common))
    only_global = latent(lora_server, graphs.regional_flux(**common))
    with_a = latent(
        lora_server, graphs.regional_flux(**{**common, "loras_before": [(graphs.FLUX_LORA, 1.0), (NATIVE, 1.0)]})
    )
    with_b = latent(
        lora_server, graphs.regional_flux(**{**common, "loras_before": [(graphs.FLUX_LORA, 1.0), (OTHER, 0.8)]})
    )
    assert_matches(regions(ours)[0], regions(with_a)[0], regions(only_global)[0], "region 1")
    assert_matches(regions(ours)[1], regions(with_b)[1], regions(only_global)[1], "region 2")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(regional_loras=[(WRONG, 1.0, "1")]), "lora_name 'rl_wrong_size_lora.safetensors' does not fit"),
        (dict(regional_loras=[(NATIVE, 1.0, "nowhere")]), "region 'nowhere' is not a region of the layout"),
        (dict(regional_loras=[(NATIVE, float("nan"), "1")]), "strength_model must be a finite number"),
        (dict(regional_loras=[(NATIVE, 1.0, "1")], base_ratio=1.0), "model is not regionally patched"),
    ],
    ids=["wrong-size", "no-such-region", "nan", "not-patched"],
)
def test_bad_inputs_name_the_input(lora_server, change, message):
    result = lora_server.run(graphs.regional_flux(seed=3, **{**ISOLATED, **change}))
    assert result.status == "error"
    assert message in str(result.error), result.error
    assert latent(lora_server, graphs.regional_flux(seed=3, **ISOLATED)).isfinite().all()  # the server is up


WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


def test_ui_workflow_matches_its_api_twin(lora_server):
    from support.workflows import check_ui_matches_api

    ui = json.loads((WORKFLOWS / "regional_lora.json").read_text())
    api = json.loads((WORKFLOWS / "api" / "regional_lora.json").read_text())
    assert (WORKFLOWS / "regional_lora.jpg").stat().st_size > 1000
    assert [n["class_type"] for n in api.values()].count("RL_RegionalLora") == 2
    check_ui_matches_api(lora_server.object_info(), ui, api)


@pytest.mark.slow
def test_shipped_workflow_api_twin(lora_server):
    """The example runs shrunk, with this module's LoRA files in place of the example's and CLIP-L through the
    SD3 loader (FLUX's cond and pooled widths) in place of its DualCLIPLoader: the real T5 path through the server
    is the FLUX example's test (test_regional_flux_server.py); here its T5-XXL encodes cost two minutes per host."""
    from rl_devkit.demo import shrink_for_tiny_models

    prompt = shrink_for_tiny_models(json.loads((WORKFLOWS / "api" / "regional_lora.json").read_text()))
    loras = iter((NATIVE, DIFFUSERS))
    for node in prompt.values():
        if node["class_type"] == "RL_RegionalLora":
            node["inputs"]["lora_name"] = next(loras)
        elif node["class_type"] == "DualCLIPLoader":
            node.update(class_type="CLIPLoader", inputs=dict(graphs.FLUX_TEXT_STAND_IN))
    result = lora_server.run(prompt, timeout=1500)
    assert result.status == "success", result.error
    assert len([n for n, out in result.outputs.items() if out.get("images")]) >= 2
