"""Regional LoRA on LongCat-Image (newer hosts only), through the nodes (Regional FLUX Patch, then Regional LoRA
reading a real file from ComfyUI's loras folder) on ComfyUI's LongCatImage model at small width, against the same
LoRA loaded for the whole model by ComfyUI's own comfy.sd.load_lora_for_models (what LoraLoaderModelOnly runs).

LongCat-Image is FLUX.1's Flux class (FLUX.1's layer names and LoRA key map) with sequential text positions, which
the region texts are re-based to per call. Layout and model as in test_regional_longcat_image: two disjoint
regions, base_ratio 0 in every block of every step."""

from __future__ import annotations

import math

import pytest
import torch

from support.family_checks import step_options
from test_regional_lora_flux2 import assert_matches
from test_regional_longcat_image import BASE_LEN, DEPTH, LATENT, inputs, regional_cond, rope_options

pytestmark = pytest.mark.newer_host("comfy.model_base:LongCatImage")

LORA = "rl_longcat_a.safetensors"
TOKEN_LAYERS = (  # FLUX.1's token layers (LongCat-Image has no pooled vector and no guidance embedder)
    "img_in",
    "txt_in",
    "final_layer.linear",
    *(
        f"double_blocks.{i}.{side}_{layer}"
        for i in range(DEPTH)
        for side in ("img", "txt")
        for layer in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")
    ),
    *(f"single_blocks.{i}.{layer}" for i in range(DEPTH) for layer in ("linear1", "linear2")),
)


@pytest.fixture(scope="module")
def longcat_model():
    """ComfyUI's LongCatImage BaseModel (its class and config drive comfy.lora.model_lora_keys_unet) holding the
    small LongCat-Image of test_regional_longcat_image."""
    import comfy.model_base
    import comfy.supported_models
    from rl_devkit.tiny_models import small_flux

    config = comfy.supported_models.LongCatImage({"image_model": "flux", "disable_unet_model_creation": True})
    model = comfy.model_base.LongCatImage(config, device=torch.device("cpu"))
    model.diffusion_model = small_flux(
        depth=DEPTH, depth_single_blocks=DEPTH, seed=13, vec_in_dim=None, guidance_embed=False, txt_ids_dims=[1, 2]
    )
    return model


@pytest.fixture(scope="module")
def lora(longcat_model, tmp_path_factory):
    """A rank-4 LoRA on every token layer in ComfyUI's key format, in a folder registered as a loras folder."""
    import comfy.utils
    import folder_paths

    gen = torch.Generator().manual_seed(4)
    weights = longcat_model.diffusion_model.state_dict()
    sd = {}
    for layer in TOKEN_LAYERS:
        o, i = weights[f"{layer}.weight"].shape
        sd[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(o, 4, generator=gen) / 2
        sd[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(4, i, generator=gen) / math.sqrt(i)
    folder = tmp_path_factory.mktemp("longcat_loras")
    comfy.utils.save_torch_file(sd, str(folder / LORA))
    folder_paths.add_model_folder_path("loras", str(folder))
    return sd


def patched(base_model, cond, whole_model_lora=None):
    """Regional FLUX Patch (base_ratio 0, every block and step) on a ModelPatcher of `base_model`, after the LoRA
    loaded for the whole model by ComfyUI when given."""
    import comfy.model_patcher
    import comfy.sd
    from regional_layout.nodes.regional_flux_patch import RegionalFluxPatch

    model = comfy.model_patcher.ModelPatcher(base_model, torch.device("cpu"), torch.device("cpu"))
    if whole_model_lora is not None:
        model = comfy.sd.load_lora_for_models(model, None, whole_model_lora, 1.0, 0.0)[0]
    return RegionalFluxPatch.execute(
        model=model,
        regional_cond=cond,
        base_ratio=0.0,
        control_steps=2,
        double_blocks="all",
        single_blocks="all",
        feather=0.0,
    ).result[0]


def with_regional_lora(model, strength=1.0):
    from regional_layout.nodes.regional_lora import RegionalLora

    return RegionalLora.execute(model=model, lora_name=LORA, strength_model=strength, region="1").result[0]


def sample(model, x):
    """One model call through the patcher's wrappers and weight patches (as ComfyUI's sampler)."""
    opts = {**step_options(rope_options=rope_options()), "wrappers": model.wrappers}
    model.patch_model()
    try:
        with torch.no_grad():
            return model.model.diffusion_model(
                x["x"], x["timestep"], x["context"], None, None, transformer_options=opts
            )
    finally:
        model.unpatch_model()


def pixels(model, index):
    """The latent pixels region `index`'s tokens cover (2 x 2 per token)."""
    from regional_layout.nodes.regional_lora import regional_wrapper

    plan = regional_wrapper(model).plan(*LATENT, BASE_LEN)
    grid = plan.masks.hard[index].view(*plan.masks.grid)
    return grid.repeat_interleave(2, 0).repeat_interleave(2, 1)[: LATENT[0], : LATENT[1]]


def test_other_region_bit_identical_region_matches_whole_model_lora_strength_zero(longcat_model, lora):
    cond = regional_cond([4, 6], seed=5)
    x = inputs(seed=1)
    plain = sample(patched(longcat_model, cond), x)
    ours_model = with_regional_lora(patched(longcat_model, cond))
    ours = sample(ours_model, x)
    merged = sample(patched(longcat_model, cond, lora), x)
    one, two = pixels(ours_model, 0), pixels(ours_model, 1)
    assert one.any() and two.any() and not (one & two).any()
    assert torch.equal(ours[..., two], plain[..., two])
    assert_matches(ours, merged, plain, one)
    assert (merged[..., two] - plain[..., two]).abs().max() > 0.05  # the whole-model LoRA leaks into region 2
    assert torch.equal(sample(with_regional_lora(patched(longcat_model, cond), 0.0), x), plain)
