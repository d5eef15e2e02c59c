"""Compatibility row 2: quantized weights served the way ComfyUI-GGUF serves them. The test-only loader
`RLTest_QuantizedUNETLoader` (tests/support/custom_nodes/rl_test_quantized) builds the tiny FLUX through ComfyUI's own
loader with custom operations whose Linear keeps int8 codes and row scales and dequantizes inside `forward`; regional
prompting, its isolation and Regional LoRA run on it through the real server.

Layout (128 x 96 px, token-aligned): region 1 the left half, region 2 the top right quarter, the background the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import module_server, start_server
from support import graphs
from test_lsregen_server import saved_latent
from test_other_packs import OTHER_PACKS
from test_regional_lora_server import BOXES, ISOLATED, regions

pytestmark = pytest.mark.server

# Int8 with one absmax scale per row rounds each weight by at most half a step (absmax / 254): an rms error of
# about 0.3 % of the row's rms for Gaussian rows of 3072. Through the tiny FLUX and two sampling steps it moved the
# sampled latent by 1.3 % relative rms (Q8_0, one scale per 32 weights: 0.85 %), and the regional effect (14 % of the
# latent) by 3 % of itself. 5 % leaves room for other seeds and hosts and stays far below what a dropped mask or a
# plain run costs (the whole regional effect).
REL_TOL = 0.05


server = module_server(OTHER_PACKS)


def quantized(prompt: dict) -> dict:
    loader = next(node for node in prompt.values() if node["class_type"] == "UNETLoader")
    loader["class_type"] = "RLTest_QuantizedUNETLoader"
    loader["inputs"] = {"unet_name": loader["inputs"]["unet_name"]}
    return prompt


def latent(server, prompt: dict) -> torch.Tensor:
    result = server.run(prompt)
    assert result.status == "success", result.error
    return saved_latent(server, result, "save_latent").float()


def rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def test_regional_flux_on_quantized_weights_stays_close_to_float(server):
    assert "RLTest_QuantizedUNETLoader" in server.object_info(), "the quantized loader did not load"
    common = dict(seed=4, save_latent=True, width=128, height=96, boxes=BOXES)
    plain = latent(server, graphs.regional_flux(patch=False, **common))
    regional = latent(server, graphs.regional_flux(**common))
    q_plain = latent(server, quantized(graphs.regional_flux(patch=False, **common)))
    q_regional = latent(server, quantized(graphs.regional_flux(**common)))
    effect = rms(regional - plain)
    print(
        f"quantized vs float: plain {rms(q_plain - plain) / rms(plain):.4f}, regional "
        f"{rms(q_regional - regional) / rms(regional):.4f} (relative rms); regional effect {effect / rms(plain):.4f}"
    )
    assert rms(q_plain - plain) > 0, "the quantized model computes exactly the float one: the test is blind"
    assert rms(q_regional - regional) <= REL_TOL * rms(regional)
    # the regional effect survives quantization: what regional prompting changes, it changes on int8 weights too
    shift = rms((q_regional - q_plain) - (regional - plain)) / effect
    print(f"the regional effect moved by {shift:.4f} of itself")
    assert shift <= 0.25


def write_q8_0_gguf(source: Path, target: Path) -> None:
    """The tiny FLUX as a GGUF file the way ComfyUI-GGUF's convert tool writes one: Q8_0 (blocks of 32 weights with
    one scale each) for matrices whose rows split into such blocks, F32 for the rest (norms, biases)."""
    import gguf
    from safetensors import safe_open

    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    with safe_open(str(source), "pt") as f:
        for key in f.keys():
            data = f.get_tensor(key).float().numpy()
            kind = gguf.GGMLQuantizationType.Q8_0
            if data.ndim != 2 or data.shape[-1] % 32:
                kind = gguf.GGMLQuantizationType.F32
            writer.add_tensor(key, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file(path=target)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


GGUF_PACK = os.environ.get("COMFYUI_GGUF_PATH")


@pytest.mark.skipif(not GGUF_PACK, reason="set COMFYUI_GGUF_PATH to a ComfyUI-GGUF checkout to run it")
def test_comfyui_gguf_q8_0_through_its_own_loader(tiny_models, tmp_path):
    """Opt-in: the real ComfyUI-GGUF pack (COMFYUI_GGUF_PATH) loads a Q8_0 GGUF of the tiny FLUX with its
    UnetLoaderGGUF; regional prompting runs on it, stays close to the float run and keeps regions isolated."""
    packs, models = tmp_path / "custom_nodes", tmp_path / "diffusion_models"
    packs.mkdir()
    models.mkdir()
    (packs / "ComfyUI-GGUF").symlink_to(Path(GGUF_PACK).resolve(), target_is_directory=True)
    write_q8_0_gguf(tiny_models / "diffusion_models" / graphs.FLUX_UNET, models / "flux_tiny_q8_0.gguf")
    server = start_server(tiny_models, extra_custom_nodes=(packs,), extra_model_dirs={"diffusion_models": (models,)})
    try:
        assert "UnetLoaderGGUF" in server.object_info(), "ComfyUI-GGUF did not load"

        def gguf_loaded(prompt: dict) -> dict:
            loader = next(node for node in prompt.values() if node["class_type"] == "UNETLoader")
            loader["class_type"] = "UnetLoaderGGUF"
            loader["inputs"] = {"unet_name": "flux_tiny_q8_0.gguf"}
            return prompt

        common = dict(seed=4, save_latent=True, width=128, height=96, boxes=BOXES)
        regional = latent(server, graphs.regional_flux(**common))
        q_regional = latent(server, gguf_loaded(graphs.regional_flux(**common)))
        print(f"Q8_0 GGUF vs float, regional: relative rms {rms(q_regional - regional) / rms(regional):.4f}")
        assert 0 < rms(q_regional - regional) <= REL_TOL * rms(regional)
        first = latent(server, gguf_loaded(graphs.regional_flux(seed=5, **ISOLATED)))
        second = latent(
            server,
            gguf_loaded(graphs.regional_flux(seed=5, prompts=("a red apple", "a green glass bottle"), **ISOLATED)),
        )
        assert torch.equal(regions(first)[0], regions(second)[0])
        assert not torch.equal(regions(first)[1], regions(second)[1])
    finally:
        server.cleanup()


def test_isolation_and_regional_lora_on_quantized_weights(server):
    """β = 0 in every block and step: region 2's prompt never reaches region 1; a regional LoRA on region 1 leaves
    region 2 bit-identical and changes region 1 (the LoRA's update is added after the dequantized Linear)."""
    first = latent(server, quantized(graphs.regional_flux(seed=5, **ISOLATED)))
    second = latent(
        server, quantized(graphs.regional_flux(seed=5, prompts=("a red apple", "a green glass bottle"), **ISOLATED))
    )
    assert torch.equal(regions(first)[0], regions(second)[0])
    assert not torch.equal(regions(first)[1], regions(second)[1])
    lora = quantized(graphs.regional_flux(seed=5, regional_loras=[(graphs.FLUX_LORA, 1.0, "1")], **ISOLATED))
    with_lora = latent(server, lora)
    assert torch.equal(regions(with_lora)[1], regions(first)[1])
    assert not torch.allclose(regions(with_lora)[0], regions(first)[0], atol=1e-3)
