"""Regional LoRA on ComfyUI's real Flux class, patched through a real ModelPatcher (object patches, weight
patches for the global LoRA), against the same LoRA merged into the whole model by ComfyUI's own add_patches.

Layout: two disjoint regions, beta 0 in every block of every step, so a region's tokens see only that region
(test_regional_flux_attention's isolation): region 1's output then depends only on what happens in region 1.
"""

from __future__ import annotations


import pytest
import torch

from test_regional_flux_attention import HEIGHT, WIDTH, embeds, inputs, regional_cond

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

torch.set_num_threads(1)

TOKEN_LAYERS = [
    "img_in",
    "txt_in",
    "double_blocks.0.img_attn.qkv",
    "double_blocks.0.img_attn.proj",
    "double_blocks.1.img_mlp.0",
    "double_blocks.1.img_mlp.2",
    "double_blocks.0.txt_attn.qkv",
    "double_blocks.1.txt_attn.proj",
    "double_blocks.0.txt_mlp.2",
    "single_blocks.0.linear1",
    "single_blocks.1.linear2",
    "final_layer.linear",
]
# Region tokens at merged-weight precision: ComfyUI adds s·B·A to W in float32 once; the runtime adds s·B(A·x) to
# W·x. Both are float32 here; the two orders of summation differ by a few ulps per layer (~1e-6 relative), which
# 12 patched layers and 4 blocks carry into the output at well under 1e-4.
ATOL = 1e-4


class Holder(torch.nn.Module):
    """What a ModelPatcher patches: a module with `diffusion_model` (as ComfyUI's BaseModel)."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model


@pytest.fixture(scope="module")
def flux():
    from rl_devkit.tiny_models import small_flux

    return small_flux(depth=2, depth_single_blocks=2, seed=3)


def lora_file(flux, layers=TOKEN_LAYERS, rank=4, seed=0, alpha=2.0):
    """A LoRA state dict in the `diffusion_model.<layer>.lora_up/lora_down/alpha` format ComfyUI reads."""
    gen = torch.Generator().manual_seed(seed)
    sd = dict(flux.named_parameters())
    out = {}
    for layer in layers:
        o, i = sd[f"{layer}.weight"].shape
        out[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(o, rank, generator=gen) * 0.3
        out[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(rank, i, generator=gen) * 0.3
        out[f"diffusion_model.{layer}.alpha"] = torch.tensor(alpha)
    return out


def comfy_patches(flux, lora):
    """comfy.lora.load_lora's patches, with the `diffusion_model.` key map model_lora_keys_unet starts with."""
    import comfy.lora

    key_map = {
        f"diffusion_model.{k[: -len('.weight')]}": f"diffusion_model.{k}"
        for k in flux.state_dict()
        if k.endswith(".weight")
    }
    return comfy.lora.load_lora(lora, key_map, log_missing=False)


def patcher(flux, cond, beta=0.0, global_loras=(), family=None, **options):
    import comfy.model_patcher

    from regional_layout.attention_patches.families import FLUX1
    from regional_layout.attention_patches.flux_patch import RegionalFluxOptions, apply_regional_flux

    base = comfy.model_patcher.ModelPatcher(Holder(flux), torch.device("cpu"), torch.device("cpu"))
    for lora in global_loras:
        base.add_patches(comfy_patches(flux, lora), 1.0)
    opts = dict(beta=beta, control_steps=2, double_blocks=frozenset({0, 1}), single_blocks=frozenset({0, 1}))
    return apply_regional_flux(base, cond, RegionalFluxOptions(**{**opts, **options}), family or FLUX1)


def with_regional(mp, flux, lora, row, strength=1.0, name="tiny", family=None):
    from regional_layout.attention_patches.families import FLUX1
    from regional_layout.nodes.regional_lora import apply_regional_lora, lora_updates, regional_wrapper

    updates, _ = lora_updates(comfy_patches(flux, lora), row, strength, name, flux)
    return apply_regional_lora(mp, updates, family or FLUX1, regional_wrapper(mp))


def sample(mp, x, cond_or_uncond=(0,), sigma=0.7):
    """One model call through the patcher's wrappers and patches (as ComfyUI's sampler makes it)."""
    opts = {
        "cond_or_uncond": list(cond_or_uncond),
        "sigmas": torch.tensor([sigma]),
        "sample_sigmas": torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0]),
        "wrappers": mp.wrappers,
    }
    mp.patch_model()
    try:
        with torch.no_grad():
            if "y" not in x:  # Chroma
                return mp.model.diffusion_model(
                    x["x"], x["timestep"], x["context"], x["guidance"], transformer_options=opts
                )
            return mp.model.diffusion_model(
                x["x"], x["timestep"], x["context"], x["y"], x["guidance"], transformer_options=opts
            )
    finally:
        mp.unpatch_model()


def pixels(cond, region):
    """[H/8, W/8] latent pixels of `region`'s tokens."""
    from regional_layout.attention_patches.token_masks import region_token_masks

    tm = region_token_masks(cond.masks(), HEIGHT // 8, WIDTH // 8)
    rows, cols = tm.grid
    inside = tm.hard[region].view(rows, cols).repeat_interleave(2, 0).repeat_interleave(2, 1)
    return inside[: HEIGHT // 8, : WIDTH // 8]


@pytest.fixture(scope="module")
def cond():
    return regional_cond(embeds([4, 6], seed=5))


def test_other_region_bit_identical_and_region_matches_whole_model_lora(flux, cond):
    """Tests 1 and 2: a LoRA on region 1 leaves region 2 bit-identical; region 1 matches the LoRA merged into
    the whole model by ComfyUI (add_patches, as LoraLoaderModelOnly)."""
    x, lora = inputs(), lora_file(flux)
    plain = sample(patcher(flux, cond), x)
    ours = sample(with_regional(patcher(flux, cond), flux, lora, 0), x)
    merged = sample(patcher(flux, cond, global_loras=[lora]), x)
    one, two = pixels(cond, 0), pixels(cond, 1)
    assert torch.equal(ours[..., two], plain[..., two])
    assert (ours[..., one] - plain[..., one]).abs().max() > 100 * ATOL  # the LoRA does change region 1
    torch.testing.assert_close(ours[..., one], merged[..., one], atol=ATOL, rtol=0)
    assert not torch.allclose(merged[..., two], plain[..., two], atol=100 * ATOL)  # the merged one leaks


def test_strength_zero_is_bit_identical(flux, cond):
    x = inputs(seed=2)
    plain = sample(patcher(flux, cond), x)
    assert torch.equal(sample(with_regional(patcher(flux, cond), flux, lora_file(flux), 0, strength=0.0), x), plain)


def test_two_regional_loras_and_a_global_one(flux, cond):
    """Test 4: each region shows only its own LoRA and the global one."""
    x = inputs(seed=3)
    a, b, g = (lora_file(flux, seed=s) for s in (1, 2, 3))
    mp = with_regional(with_regional(patcher(flux, cond, global_loras=[g]), flux, a, 0), flux, b, 1)
    ours = sample(mp, x)
    one, two = pixels(cond, 0), pixels(cond, 1)
    torch.testing.assert_close(
        ours[..., one], sample(patcher(flux, cond, global_loras=[g, a]), x)[..., one], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        ours[..., two], sample(patcher(flux, cond, global_loras=[g, b]), x)[..., two], atol=ATOL, rtol=0
    )
    only_g = sample(patcher(flux, cond, global_loras=[g]), x)
    assert (ours[..., one] - only_g[..., one]).abs().max() > 100 * ATOL


def test_model_untouched_and_negative_rows_plain(flux, cond):
    """The input patcher and the Flux module are unchanged afterwards; a negative row gets no regional LoRA,
    also outside the control steps, where the LoRA still reaches its region."""
    x = inputs(seed=4)
    before = {k: v.clone() for k, v in flux.state_dict().items()}
    modules = dict(flux.named_modules())
    base = patcher(flux, cond)
    mp = with_regional(base, flux, lora_file(flux), 0)
    assert not any("regional_lora" in k for k in base.object_patches)
    both = {k: torch.cat([x[k], x[k]]) for k in x}
    for sigma in (0.7, 0.4):  # a control step, then a plain one
        mixed = sample(mp, both, cond_or_uncond=(0, 1), sigma=sigma)
        plain = sample(base, both, cond_or_uncond=(0, 1), sigma=sigma)
        assert torch.equal(mixed[1:], plain[1:])
        assert not torch.equal(mixed[:1], plain[:1])
    assert dict(flux.named_modules()).keys() == modules.keys()
    assert all(a is b for a, b in zip(dict(flux.named_modules()).values(), modules.values()))
    assert all(torch.equal(v, before[k]) for k, v in flux.state_dict().items())


def test_per_sample_layers_are_left_out(flux):
    from regional_layout.nodes.regional_lora import lora_updates

    lora = lora_file(
        flux, layers=["double_blocks.0.img_mod.lin", "single_blocks.0.modulation.lin", "double_blocks.0.img_attn.qkv"]
    )
    updates, skipped = lora_updates(comfy_patches(flux, lora), 0, 1.0, "tiny", flux)
    assert list(updates) == ["double_blocks.0.img_attn.qkv"]
    assert sorted(skipped) == ["double_blocks.0.img_mod.lin", "single_blocks.0.modulation.lin"]


def test_offsets_of_fused_layers(flux, cond):
    """A patch mapped onto part of a fused layer (diffusers' to_q/to_k/to_v onto FLUX's qkv: ComfyUI's OFFSET
    patches) updates only those output columns, as ComfyUI's merge does."""
    import comfy.lora

    gen = torch.Generator().manual_seed(7)
    hidden = flux.hidden_size
    lora = {
        "t.q.lora_up.weight": torch.randn(hidden, 2, generator=gen),
        "t.q.lora_down.weight": torch.randn(2, hidden, generator=gen),
    }
    key_map = {"t.q": ("diffusion_model.double_blocks.0.img_attn.qkv.weight", (0, hidden, hidden))}
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    x = inputs(seed=5)
    from regional_layout.nodes.regional_lora import apply_regional_lora, lora_updates, regional_wrapper
    from regional_layout.attention_patches.families import FLUX1

    mp = patcher(flux, cond)
    updates, _ = lora_updates(patches, 0, 1.0, "tiny", flux)
    assert updates["double_blocks.0.img_attn.qkv"][0].out_slice == (hidden, hidden)
    ours = sample(apply_regional_lora(mp, updates, FLUX1, regional_wrapper(mp)), x)
    merged = patcher(flux, cond)
    merged.add_patches(patches, 1.0)
    one = pixels(cond, 0)
    torch.testing.assert_close(ours[..., one], sample(merged, x)[..., one], atol=ATOL, rtol=0)


def test_wrong_shapes_and_formats_are_refused(flux):
    from regional_layout.nodes.regional_lora import lora_updates

    bad = lora_file(flux, layers=["double_blocks.0.img_attn.qkv"])
    bad["diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight"] = torch.randn(4, 7)
    with pytest.raises(ValueError, match="lora_name 'bad.safetensors' does not fit the model"):
        lora_updates(comfy_patches(flux, bad), 0, 1.0, "bad.safetensors", flux)
    loha = {"diffusion_model.double_blocks.0.img_attn.qkv.diff": torch.zeros(3 * flux.hidden_size, flux.hidden_size)}
    with pytest.raises(ValueError, match="lora_name 'diff.safetensors' holds a 'diff' patch"):
        lora_updates(comfy_patches(flux, loha), 0, 1.0, "diff.safetensors", flux)


def test_chroma_same_blocks_same_rule():
    """Chroma (FLUX's blocks, no img_mod: modulations come from the distilled guidance layer): region 2 bit-identical,
    region 1 as ComfyUI's merged LoRA."""
    import test_regional_chroma as chroma_tests
    from regional_layout.attention_patches.families import CHROMA
    from rl_devkit.tiny_models import small_chroma

    model = small_chroma(depth=2, depth_single_blocks=2, seed=5)
    cond = chroma_tests.regional_cond([4, 6])
    x, lora = chroma_tests.inputs(), lora_file(model)
    plain = sample(patcher(model, cond, family=CHROMA), x)
    ours = sample(with_regional(patcher(model, cond, family=CHROMA), model, lora, 0, family=CHROMA), x)
    merged = sample(patcher(model, cond, global_loras=[lora], family=CHROMA), x)
    one, two = pixels(cond, 0), pixels(cond, 1)
    assert torch.equal(ours[..., two], plain[..., two])
    assert (ours[..., one] - plain[..., one]).abs().max() > 100 * ATOL
    torch.testing.assert_close(ours[..., one], merged[..., one], atol=ATOL, rtol=0)


def test_region_by_index_name_or_background():
    from regional_layout.attention_patches.regional_cond import RegionalConditioning
    from regional_layout.layout.regions import Region, RegionLayout
    from regional_layout.nodes.regional_lora import region_row

    masks = torch.zeros(2, HEIGHT, WIDTH)
    masks[0, :, :40], masks[1, :, 60:] = 1, 1
    regions = (Region("a cat", masks[0], name="Cat"), Region("a dog", masks[1], name="dog"))
    e = embeds([2, 3])
    cond = RegionalConditioning(
        RegionLayout(WIDTH, HEIGHT, regions, "base", "bg"), tuple(e), torch.zeros(1, 2, e[0].shape[-1])
    )
    assert [region_row(cond, r) for r in ("1", " 2 ", "cat", "Dog", "background")] == [0, 1, 0, 1, 2]
    for bad in ("0", "3", "bird", ""):
        with pytest.raises(ValueError, match=f"region {bad!r} is not a region of the layout.*1 \\(Cat\\)"):
            region_row(cond, bad)
