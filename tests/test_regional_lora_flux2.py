"""Regional LoRA on FLUX.2, through the nodes (Regional FLUX Patch, then Regional LoRA reading real files from
ComfyUI's loras folder) on ComfyUI's real Flux2 model at small width, against the same LoRA loaded for the whole
model by ComfyUI's own comfy.sd.load_lora_for_models (what LoraLoaderModelOnly runs).

FLUX.2 has FLUX.1's layer names (double blocks with an image and a text stream, single blocks over the joint
sequence); its modulations are global and act per sample. Key formats: ComfyUI's `diffusion_model.<layer>.lora_up/
lora_down/alpha` and kohya's `lora_unet_<layer with _>`, both mapped by comfy.lora.model_lora_keys_unet. Layout: two
disjoint regions, base_ratio 0 in every block of every step (test_regional_flux2's isolation).
"""

from __future__ import annotations

import math

import pytest
import torch

from test_regional_flux2 import DEPTH, LATENT, PAD, inputs, regional_cond

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

torch.set_num_threads(1)

TOKEN_LAYERS = (  # every Linear with token rows
    "img_in",
    "txt_in",
    "final_layer.linear",
    *(
        f"double_blocks.{i}.{layer}"
        for i in range(DEPTH)
        for layer in (
            "img_attn.qkv",
            "img_attn.proj",
            "img_mlp.0",
            "img_mlp.2",
            "txt_attn.qkv",
            "txt_attn.proj",
            "txt_mlp.0",
            "txt_mlp.2",
        )
    ),
    *(f"single_blocks.{i}.{layer}" for i in range(DEPTH) for layer in ("linear1", "linear2")),
)
NATIVE, KOHYA = "native", "kohya"
GOOD, SECOND, GLOBAL = "rl_flux2_a.safetensors", "rl_flux2_b.safetensors", "rl_flux2_global.safetensors"
# As in test_regional_lora_qwen_image: the merged W + s·B·A and the runtime W·x + s·B(A·x) are the same sums in
# another order, a few float32 ulps per patched layer; a LoRA on the wrong region is off by 100 % of its effect.
REL_TOL = 1e-4


def lora_state_dict(model, seed=0, rank=4, keys=NATIVE, alpha=None):
    """A rank-`rank` LoRA for every token layer of `model` (ComfyUI's Flux2) in the key format `keys`."""
    gen = torch.Generator().manual_seed(seed)
    weights = model.diffusion_model.state_dict()
    out = {}
    for layer in TOKEN_LAYERS:
        o, i = weights[f"{layer}.weight"].shape
        name = f"diffusion_model.{layer}" if keys == NATIVE else "lora_unet_" + layer.replace(".", "_")
        out[f"{name}.lora_up.weight"] = torch.randn(o, rank, generator=gen) / math.sqrt(rank)
        out[f"{name}.lora_down.weight"] = torch.randn(rank, i, generator=gen) / math.sqrt(i)
        if alpha is not None:
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


@pytest.fixture(scope="module")
def flux2_model():
    from rl_devkit.tiny_models import small_flux2_model

    return small_flux2_model(depth=DEPTH, depth_single_blocks=DEPTH, seed=7)


@pytest.fixture(scope="module")
def loras(flux2_model, tmp_path_factory):
    """{file name: state dict}, written to a folder registered as one of ComfyUI's loras folders."""
    import comfy.utils
    import folder_paths

    files = {
        GOOD: lora_state_dict(flux2_model, seed=1),
        SECOND: lora_state_dict(flux2_model, seed=2, keys=KOHYA, alpha=2.0),
        GLOBAL: lora_state_dict(flux2_model, seed=3),
    }
    folder = tmp_path_factory.mktemp("flux2_loras")
    for name, sd in files.items():
        comfy.utils.save_torch_file(sd, str(folder / name))
    folder_paths.add_model_folder_path("loras", str(folder))
    return files


def patched(flux2_model, cond, global_loras=(), loras=None):
    """Regional FLUX Patch (base_ratio 0, every block and step) on a ModelPatcher of `flux2_model`, after the
    `global_loras` loaded for the whole model by ComfyUI (comfy.sd.load_lora_for_models)."""
    import comfy.model_patcher
    import comfy.sd

    from regional_layout.nodes.regional_flux_patch import RegionalFluxPatch

    model = comfy.model_patcher.ModelPatcher(flux2_model, torch.device("cpu"), torch.device("cpu"))
    for name in global_loras:
        model = comfy.sd.load_lora_for_models(model, None, loras[name], 1.0, 0.0)[0]
    return RegionalFluxPatch.execute(
        model=model,
        regional_cond=cond,
        base_ratio=0.0,
        control_steps=2,
        double_blocks="all",
        single_blocks="all",
        feather=0.0,
    ).result[0]


def regional(model, lora_name, region="1", strength=1.0):
    from regional_layout.nodes.regional_lora import RegionalLora

    return RegionalLora.execute(model=model, lora_name=lora_name, strength_model=strength, region=region).result[0]


def sample(model, x, cond_or_uncond=(0,), sigma=0.7):
    """One model call through the patcher's wrappers and weight patches (as ComfyUI's sampler)."""
    opts = {
        "cond_or_uncond": list(cond_or_uncond),
        "sigmas": torch.tensor([sigma]),
        "sample_sigmas": torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0]),
        "wrappers": model.wrappers,
    }
    model.patch_model()
    try:
        with torch.no_grad():
            return model.model.diffusion_model(
                x["x"], x["timestep"], x["context"], None, x["guidance"], transformer_options=opts
            )
    finally:
        model.unpatch_model()


def pixels(model, index):
    """The latent pixels of region `index`'s tokens (patch size 1: one token per latent pixel)."""
    from regional_layout.nodes.regional_lora import regional_wrapper

    plan = regional_wrapper(model).plan(*LATENT, PAD)
    return plan.masks.hard[index].view(*plan.masks.grid)


def assert_matches(ours, merged, plain, where):
    """`ours` equals ComfyUI's merged LoRA on `where` within REL_TOL of the LoRA's effect there."""
    effect = (merged[..., where] - plain[..., where]).abs().max()
    assert effect > 0.05  # the LoRA does change this region
    error = (ours[..., where] - merged[..., where]).abs().max()
    assert error <= REL_TOL * effect, f"error {error:.3g} against an effect of {effect:.3g}"


@pytest.fixture(scope="module")
def cond():
    return regional_cond([4, 6], seed=5)


def test_other_region_bit_identical_and_region_matches_whole_model_lora(flux2_model, loras, cond):
    """Tests 1 and 2: a LoRA on region 1 leaves region 2 bit-identical to no LoRA; region 1 matches the LoRA loaded
    for the whole model by ComfyUI (which leaks into region 2)."""
    x = inputs(seed=1)
    plain = sample(patched(flux2_model, cond), x)
    ours = sample(regional(patched(flux2_model, cond), GOOD), x)
    merged = sample(patched(flux2_model, cond, [GOOD], loras), x)
    one, two = pixels(ours_model := patched(flux2_model, cond), 0), pixels(ours_model, 1)
    assert one.any() and two.any() and not (one & two).any()
    assert torch.equal(ours[..., two], plain[..., two])
    assert_matches(ours, merged, plain, one)
    assert (merged[..., two] - plain[..., two]).abs().max() > 0.05  # the whole-model LoRA leaks into region 2


def test_strength_zero_is_bit_identical(flux2_model, loras, cond):
    """Test 3."""
    x = inputs(seed=2)
    plain = sample(patched(flux2_model, cond), x)
    assert torch.equal(sample(regional(patched(flux2_model, cond), GOOD, strength=0.0), x), plain)


def test_two_regional_loras_and_a_global_one(flux2_model, loras, cond):
    """Test 4: a LoRA on each region (two key formats) and a global LoRA loaded before the patch: each region shows
    only its own LoRA and the global one."""
    x = inputs(seed=3)
    model = regional(regional(patched(flux2_model, cond, [GLOBAL], loras), GOOD, "1"), SECOND, "2")
    ours = sample(model, x)
    only_global = sample(patched(flux2_model, cond, [GLOBAL], loras), x)
    one, two = pixels(model, 0), pixels(model, 1)
    assert_matches(ours, sample(patched(flux2_model, cond, [GLOBAL, GOOD], loras), x), only_global, one)
    assert_matches(ours, sample(patched(flux2_model, cond, [GLOBAL, SECOND], loras), x), only_global, two)


def test_streams_of_flux2_layers(flux2_model):
    """Every Linear with token rows is in the stream its rows belong to; the global modulations and the time and
    guidance embedders (per sample) are in none."""
    from regional_layout.attention_patches.families import FLUX2
    from regional_layout.attention_patches.regional_lora import stream_of

    linears = [n for n, m in flux2_model.diffusion_model.named_modules() if isinstance(m, torch.nn.Linear)]
    streams = {n: stream_of(n, FLUX2) for n in linears}
    assert {n for n, s in streams.items() if s is not None} == set(TOKEN_LAYERS)
    assert {n for n, s in streams.items() if s == "joint"} == {n for n in TOKEN_LAYERS if n.startswith("single")}
    assert any("modulation" in n for n in linears) and not any(streams[n] for n in linears if "modulation" in n)
