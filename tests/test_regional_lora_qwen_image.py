"""Regional LoRA on Qwen-Image, through the nodes (Regional FLUX Patch, then Regional LoRA reading real files from
ComfyUI's loras folder) on ComfyUI's real QwenImage model, against the same LoRA loaded for the whole model by
ComfyUI's own comfy.sd.load_lora_for_models (what LoraLoaderModelOnly runs).

The LoRA files use two key formats ComfyUI maps for Qwen-Image on both hosts: diffusers' / ai-toolkit's
`transformer_blocks.<i>.attn.to_q.lora_A/lora_B` without alpha, and ComfyUI's own
`diffusion_model.<layer>.lora_up/lora_down/alpha`. Layout: two disjoint regions, base_ratio 0 in every block of
every step, so a region's tokens see only that region (test_regional_qwen_image's isolation).
"""

from __future__ import annotations

import math

import pytest
import torch

from test_regional_qwen_image import BASE_LEN, DEPTH, HEIGHT, WIDTH, inputs, regional_cond

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

torch.set_num_threads(1)

TOKEN_LAYERS = (  # every Linear with token rows: both streams of both blocks, the input and output projections
    "img_in",
    "txt_in",
    "proj_out",
    *(
        f"transformer_blocks.{i}.{layer}"
        for i in range(DEPTH)
        for layer in (
            "attn.to_q",
            "attn.to_k",
            "attn.to_v",
            "attn.to_out.0",
            "img_mlp.net.0.proj",
            "img_mlp.net.2",
            "attn.add_q_proj",
            "attn.add_k_proj",
            "attn.add_v_proj",
            "attn.to_add_out",
            "txt_mlp.net.0.proj",
            "txt_mlp.net.2",
        )
    ),
)
PER_SAMPLE_LAYERS = ("transformer_blocks.0.img_mod.1", "transformer_blocks.1.txt_mod.1", "norm_out.linear")
DIFFUSERS, NATIVE = ("lora_A", "lora_B"), ("lora_down", "lora_up")
GOOD, SECOND, GLOBAL, WRONG, FLUX_ONLY, WITH_MODULATION = (
    "rl_qwen_a.safetensors",
    "rl_qwen_b.safetensors",
    "rl_qwen_global.safetensors",
    "rl_qwen_wrong_size.safetensors",
    "rl_qwen_flux_keys.safetensors",
    "rl_qwen_modulation.safetensors",
)
# Region tokens against ComfyUI's merged LoRA, relative to the LoRA's own effect there. ComfyUI adds s·B·A to W once
# (float32 here); the runtime adds s·B(A·x) to W·x: the same sums in another order, a few float32 ulps per patched
# layer (~1e-7 relative each), which 27 patched layers and 2 blocks carry into the output at well under 1e-4 of
# the effect. A LoRA on the wrong region, or missing, is off by 100 % of it.
REL_TOL = 1e-4


def lora_state_dict(model, layers=TOKEN_LAYERS, seed=0, rank=4, keys=DIFFUSERS, prefix="", alpha=None, size=None):
    """A rank-`rank` LoRA for `layers` of `model` (ComfyUI's QwenImage) in the key format `keys` (down, up)."""
    gen = torch.Generator().manual_seed(seed)
    weights = model.diffusion_model.state_dict()
    out = {}
    for layer in layers:
        o, i = size or weights[f"{layer}.weight"].shape
        down, up = keys
        out[f"{prefix}{layer}.{up}.weight"] = torch.randn(o, rank, generator=gen) / math.sqrt(rank)
        out[f"{prefix}{layer}.{down}.weight"] = torch.randn(rank, i, generator=gen) / math.sqrt(i)
        if alpha is not None:
            out[f"{prefix}{layer}.alpha"] = torch.tensor(float(alpha))
    return out


@pytest.fixture(scope="module")
def qwen_model():
    from rl_devkit.tiny_models import small_qwen_image_model

    return small_qwen_image_model(depth=DEPTH, seed=6)


@pytest.fixture(scope="module")
def loras(qwen_model, tmp_path_factory):
    """{file name: state dict}, written to a folder registered as one of ComfyUI's loras folders."""
    import comfy.utils
    import folder_paths

    files = {
        GOOD: lora_state_dict(qwen_model, seed=1),
        SECOND: lora_state_dict(qwen_model, seed=2, keys=NATIVE, prefix="diffusion_model.", alpha=2.0),
        GLOBAL: lora_state_dict(qwen_model, seed=3, prefix="transformer."),
        WRONG: lora_state_dict(qwen_model, layers=TOKEN_LAYERS[:4], seed=4, size=(32, 32)),
        FLUX_ONLY: lora_state_dict(qwen_model, layers=(), seed=5)
        | {
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.randn(192, 4),
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": torch.randn(4, 64),
        },
        WITH_MODULATION: lora_state_dict(qwen_model, layers=PER_SAMPLE_LAYERS + TOKEN_LAYERS[3:5], seed=6),
    }
    folder = tmp_path_factory.mktemp("qwen_loras")
    for name, sd in files.items():
        comfy.utils.save_torch_file(sd, str(folder / name))
    folder_paths.add_model_folder_path("loras", str(folder))
    return files


def patched(qwen_model, cond, global_loras=(), loras=None):
    """Regional FLUX Patch (base_ratio 0, every block and step) on a ModelPatcher of `qwen_model`, after the
    `global_loras` loaded for the whole model by ComfyUI (comfy.sd.load_lora_for_models, as LoraLoaderModelOnly)."""
    import comfy.model_patcher
    import comfy.sd

    from regional_layout.nodes.regional_flux_patch import RegionalFluxPatch

    model = comfy.model_patcher.ModelPatcher(qwen_model, torch.device("cpu"), torch.device("cpu"))
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
    """One model call through the patcher's wrappers, object patches and weight patches (as ComfyUI's sampler)."""
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
                x["x"], x["timestep"], x["context"], ref_latents=x.get("ref_latents"), transformer_options=opts
            )
    finally:
        model.unpatch_model()


def pixels(model, index):
    """The latent pixels of region `index`'s tokens (2x2 latent pixels per token, cut to the odd latent)."""
    from regional_layout.nodes.regional_lora import regional_wrapper

    plan = regional_wrapper(model).plan(HEIGHT // 8, WIDTH // 8, BASE_LEN)
    rows, cols = plan.masks.grid
    inside = plan.masks.hard[index].view(rows, cols).repeat_interleave(2, 0).repeat_interleave(2, 1)
    return inside[: HEIGHT // 8, : WIDTH // 8]


def assert_matches(ours, merged, plain, where):
    """`ours` equals ComfyUI's merged LoRA on `where` within REL_TOL of the LoRA's effect there."""
    effect = (merged[..., where] - plain[..., where]).abs().max()
    assert effect > 0.05  # the LoRA does change this region
    error = (ours[..., where] - merged[..., where]).abs().max()
    assert error <= REL_TOL * effect, f"error {error:.3g} against an effect of {effect:.3g}"


@pytest.fixture(scope="module")
def cond():
    return regional_cond([4, 6], seed=5)


def test_other_region_bit_identical_and_region_matches_whole_model_lora(qwen_model, loras, cond):
    """Tests 1 and 2: a LoRA on region 1 leaves region 2 bit-identical to no LoRA; region 1 matches the LoRA loaded
    for the whole model by ComfyUI (which leaks into region 2)."""
    x = inputs(seed=1)
    plain = sample(patched(qwen_model, cond), x)
    ours = sample(regional(patched(qwen_model, cond), GOOD), x)
    merged = sample(patched(qwen_model, cond, [GOOD], loras), x)
    one, two = pixels(ours_model := patched(qwen_model, cond), 0), pixels(ours_model, 1)
    assert one.any() and two.any() and not (one & two).any()
    assert torch.equal(ours[..., two], plain[..., two])
    assert_matches(ours, merged, plain, one)
    assert (merged[..., two] - plain[..., two]).abs().max() > 0.05  # the whole-model LoRA leaks into region 2


def test_strength_zero_is_bit_identical(qwen_model, loras, cond):
    """Test 3."""
    x = inputs(seed=2)
    plain = sample(patched(qwen_model, cond), x)
    assert torch.equal(sample(regional(patched(qwen_model, cond), GOOD, strength=0.0), x), plain)


def test_two_regional_loras_and_a_global_one(qwen_model, loras, cond):
    """Test 4: a LoRA on each region (two key formats) and a global LoRA (a third: diffusers' keys under
    `transformer.`) loaded before the patch: each region shows only its own LoRA and the global one."""
    x = inputs(seed=3)
    model = regional(regional(patched(qwen_model, cond, [GLOBAL], loras), GOOD, "1"), SECOND, "2")
    ours = sample(model, x)
    only_global = sample(patched(qwen_model, cond, [GLOBAL], loras), x)
    one, two = pixels(model, 0), pixels(model, 1)
    assert_matches(ours, sample(patched(qwen_model, cond, [GLOBAL, GOOD], loras), x), only_global, one)
    assert_matches(ours, sample(patched(qwen_model, cond, [GLOBAL, SECOND], loras), x), only_global, two)


def test_negative_rows_plain_and_model_untouched(qwen_model, loras, cond):
    """A negative (uncond) row gets no regional LoRA, in a control step and after the control steps (where the
    LoRA still reaches its region); the model connected to the node and its weights are unchanged afterwards."""
    x = inputs(seed=4)
    before = {k: v.clone() for k, v in qwen_model.state_dict().items()}
    base = patched(qwen_model, cond)
    model = regional(base, GOOD)
    assert not any(isinstance(k, str) and "transformer_blocks" in k for k in base.object_patches)
    both = {k: torch.cat([x[k], x[k]]) for k in x}
    for sigma in (0.7, 0.4):  # a control step, then a plain one
        mixed = sample(model, both, cond_or_uncond=(0, 1), sigma=sigma)
        plain = sample(base, both, cond_or_uncond=(0, 1), sigma=sigma)
        assert torch.equal(mixed[1:], plain[1:])
        assert not torch.equal(mixed[:1], plain[:1])
    assert all(torch.equal(v, before[k]) for k, v in qwen_model.state_dict().items())


def test_edit_reference_tokens_take_no_update(qwen_model, loras, cond):
    """Qwen-Image-Edit: the reference latent's tokens follow the image's in the image stream and get weight 0; the
    LoRA on region 1 still leaves region 2 bit-identical."""
    x = inputs(seed=5, refs=True)
    plain = sample(patched(qwen_model, cond), x)
    ours = sample(regional(patched(qwen_model, cond), GOOD), x)
    one, two = pixels(ours_model := patched(qwen_model, cond), 0), pixels(ours_model, 1)
    assert torch.equal(ours[..., two], plain[..., two])
    assert (ours[..., one] - plain[..., one]).abs().max() > 0.05


def test_streams_of_qwen_image_layers(qwen_model):
    """Every Linear of the model is in exactly the stream its input rows belong to, or per sample (no rows)."""
    from regional_layout.attention_patches.families import QWEN_IMAGE
    from regional_layout.attention_patches.regional_lora import stream_of

    linears = [n for n, m in qwen_model.diffusion_model.named_modules() if isinstance(m, torch.nn.Linear)]
    streams = {n: stream_of(n, QWEN_IMAGE) for n in linears}
    assert {n for n, s in streams.items() if s is not None} == set(TOKEN_LAYERS)
    assert {n for n, s in streams.items() if s == "txt"} == {
        n for n in TOKEN_LAYERS if n == "txt_in" or "add_" in n or "txt_mlp" in n
    }
    assert not any(s == "joint" for s in streams.values())  # double-stream blocks only


def test_per_sample_layers_are_left_out(qwen_model, loras, cond, caplog):
    """Modulations and the output norm act per image, not per token: their part of the LoRA is dropped with a
    warning; the token layers still apply to region 1 only."""
    x = inputs(seed=6)
    plain = sample(patched(qwen_model, cond), x)
    with caplog.at_level("WARNING"):
        ours = sample(regional(patched(qwen_model, cond), WITH_MODULATION), x)
    assert "3 per-sample layers" in caplog.text and "transformer_blocks.0.img_mod.1" in caplog.text
    one, two = pixels(ours_model := patched(qwen_model, cond), 0), pixels(ours_model, 1)
    assert torch.equal(ours[..., two], plain[..., two])
    assert (ours[..., one] - plain[..., one]).abs().max() > 0.05


@pytest.mark.parametrize(
    "inputs_, message",
    [
        (dict(lora_name=WRONG), f"lora_name '{WRONG}' does not fit the model: its .* is"),
        (dict(lora_name=FLUX_ONLY), f"lora_name '{FLUX_ONLY}' does not fit the model: none of its keys.*Qwen-Image"),
        (dict(region="bird"), "region 'bird' is not a region of the layout"),
        (dict(strength_model=float("nan")), "strength_model must be a finite number"),
        (dict(lora_name="missing.safetensors"), "lora_name 'missing.safetensors' is not in ComfyUI's loras folder"),
    ],
    ids=["wrong-size", "other-family", "region", "strength", "missing-file"],
)
def test_bad_input_names_the_node_input(qwen_model, loras, cond, inputs_, message):
    """Test 5 at node level: a clear error that names the Regional LoRA input."""
    from regional_layout.nodes.regional_lora import RegionalLora

    node_inputs = dict(model=patched(qwen_model, cond), lora_name=GOOD, strength_model=1.0, region="1")
    with pytest.raises(ValueError, match=f"^Regional LoRA: {message}"):
        RegionalLora.execute(**{**node_inputs, **inputs_})
