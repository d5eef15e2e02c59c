"""Regional prompting on Qwen-Image (double-stream blocks only; text RoPE positions arange(txt_start, ...); Edit's
reference latents after the image): the family checks on ComfyUI's own QwenImageTransformer2DModel with seeded
random weights, at model level (the patch node's wrapper, called through the model's DIFFUSION_MODEL wrapper
chain). Text positions: every region text and the base text start at txt_start, as each prompt alone
(attention_patches/text_positions.py); the reference computes those positions from scratch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from regional_layout.attention_patches.families import QWEN_IMAGE
from support import family_checks
from support.regional_reference import random_regional_cond, reference_override

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

HEIGHT, WIDTH = 88, 120  # pixels, not multiples of 16: latent 11 x 15 (odd, padded), token grid 6 x 8
CTX = 64
BASE_LEN = 7
DEPTH = 2


@pytest.fixture(scope="module")
def qwen():
    from rl_devkit.tiny_models import small_qwen_image

    return small_qwen_image(depth=DEPTH, seed=6)


def regional_cond(lengths, **kwargs):
    return random_regional_cond(WIDTH, HEIGHT, CTX, lengths, **kwargs)


def wrapper_for(cond, family=QWEN_IMAGE, **options):
    return family_checks.regional_wrapper(cond, family, DEPTH, **options)


def inputs(batch=1, seed=0, refs=False):
    gen = torch.Generator().manual_seed(seed)
    x = dict(
        x=torch.randn(batch, 16, 1, HEIGHT // 8, WIDTH // 8, generator=gen),
        timestep=torch.full((batch,), 0.7),
        context=torch.randn(batch, BASE_LEN, CTX, generator=gen),
    )
    if refs:  # Qwen-Image-Edit: a reference latent of another size, its tokens after the image's
        x["ref_latents"] = [torch.randn(batch, 16, 1, 9, 10, generator=gen)]
    return x


def run(model, wrapper=None, cond_or_uncond=(0,), override=None, patches_replace=None, **x):
    opts = family_checks.step_options(wrapper, cond_or_uncond, override, patches_replace)
    with torch.no_grad():
        return model(x["x"], x["timestep"], x["context"], ref_latents=x.get("ref_latents"), transformer_options=opts)


def region_pixels(wrapper, index):
    """The latent pixels of region `index`'s tokens (2x2 latent pixels per token, cut to the odd latent)."""
    return family_checks.region_pixels(wrapper, index, (HEIGHT // 8, WIDTH // 8), BASE_LEN, patch=2)


def own_positions_from_scratch(model, x, text_lens, ref_latents=None):
    """patches_replace entries that hand every block a RoPE table computed from scratch (not gathered): each text
    at arange(txt_start, txt_start + its length), as that prompt alone gets it (txt_start: Qwen-Image's formula),
    then the model's own image and reference-latent ids."""
    _, img_ids, _ = model.process_img(x)
    for i, ref in enumerate(ref_latents or []):
        img_ids = torch.cat([img_ids, model.process_img(ref, index=i + 1)[1]], dim=1)
    p = model.patch_size
    txt_start = round(max(((x.shape[-1] + p // 2) // p) // 2, ((x.shape[-2] + p // 2) // p) // 2))
    txt_ids = torch.cat([torch.arange(txt_start, txt_start + n) for n in text_lens])
    txt_ids = txt_ids.reshape(1, -1, 1).repeat(x.shape[0], 1, 3)
    pe = model.pe_embedder(torch.cat([txt_ids, img_ids], dim=1)).to(x.dtype)
    patch = lambda args, extra: extra["original_block"]({**args, "pe": pe})  # noqa: E731
    return {"dit": {("double_block", i): patch for i in range(len(model.transformer_blocks))}}


def test_the_family_reads_this_hosts_forward(qwen):
    names = QWEN_IMAGE.forward_names(qwen)
    assert names in (QWEN_IMAGE.forward_args, *QWEN_IMAGE.other_forward_args)
    assert QWEN_IMAGE.blocks(qwen) == (DEPTH,)


@pytest.mark.parametrize("changed", [0, 1])
@pytest.mark.parametrize("refs", [False, True], ids=["image", "edit-refs"])
def test_region_isolation(qwen, changed, refs):
    """beta = 0, every block, every step: changing one region's prompt leaves the other region's output latent
    bit-identical and changes its own (also with Qwen-Image-Edit's reference latent)."""
    x = inputs(refs=refs)
    lengths = [4, 6]
    first = regional_cond(lengths, seed=1)
    second = family_checks.with_region_embedding(first, regional_cond(lengths, seed=2), changed)
    a, b = run(qwen, wrapper_for(first), **x), run(qwen, wrapper_for(second), **x)
    kept, own = region_pixels(wrapper_for(first), 1 - changed), region_pixels(wrapper_for(first), changed)
    assert torch.equal(a[..., kept], b[..., kept])
    assert not torch.equal(a[..., own], b[..., own])


def test_each_region_text_keeps_its_own_positions(qwen):
    """The order of the region texts in the joint sequence does not matter: every text sits at the positions it
    has alone. With the positions the concatenation would give (region texts shifted by the ones before them),
    the order changes the picture."""
    x = inputs()
    forward, backward = regional_cond([4, 6], seed=3), regional_cond([4, 6], seed=3, order=[1, 0])
    a, b = run(qwen, wrapper_for(forward), **x), run(qwen, wrapper_for(backward), **x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    shifted = dataclasses.replace(QWEN_IMAGE, text_positions="shared")
    c, d = run(qwen, wrapper_for(forward, shifted), **x), run(qwen, wrapper_for(backward, shifted), **x)
    assert (c - d).abs().max() > 1e-3


def test_a_single_region_over_everything_is_that_prompt_alone(qwen):
    """beta = 0, one region covering the whole picture: the image sees only that region's text, at the positions
    it has alone, so the result is the plain model prompted with the region's text (the base text's stream never
    reaches the image)."""
    from regional_layout.attention_patches.regional_cond import RegionalConditioning
    from regional_layout.layout.regions import Region, RegionLayout

    x = inputs()
    text = torch.randn(1, 5, CTX, generator=torch.Generator().manual_seed(4))
    cond = RegionalConditioning(
        RegionLayout(WIDTH, HEIGHT, (Region("all", torch.ones(HEIGHT, WIDTH)),), "base", ""), (text,), None
    )
    torch.testing.assert_close(
        run(qwen, wrapper_for(cond), **x), run(qwen, **{**x, "context": text}), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("options", [dict(beta=1.0), dict(control_steps=0)], ids=["beta-1", "zero-steps"])
def test_bit_identical_when_the_method_is_off(qwen, options):
    x = inputs()
    cond = regional_cond([3, 5], background=True)
    plain = run(qwen, **x)
    assert torch.equal(run(qwen, wrapper_for(cond, **options), **x), plain)
    assert not torch.equal(run(qwen, wrapper_for(cond), **x), plain)


@pytest.mark.parametrize("refs", [False, True], ids=["image", "edit-refs"])
def test_batch_with_a_negative_prompt(qwen, refs):
    """Batch 2 with CFG: the negative row is the plain model's, bit for bit; the positive row is the regional
    result of that row alone (Edit's reference latents split with the rows)."""
    wrapper = wrapper_for(regional_cond([3, 5], background=True), beta=0.2)
    a, b = inputs(seed=1, refs=refs), inputs(seed=2, refs=refs)
    both = {k: torch.cat([a[k], b[k]]) for k in a if k != "ref_latents"}
    if refs:
        both["ref_latents"] = [torch.cat([a["ref_latents"][0], b["ref_latents"][0]])]
    mixed = run(qwen, wrapper, cond_or_uncond=(0, 1), **both)
    assert mixed.shape == (2, 16, 1, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(mixed[1:], run(qwen, cond_or_uncond=(1,), **b))
    torch.testing.assert_close(mixed[:1], run(qwen, wrapper, **a), atol=1e-5, rtol=0)


@pytest.mark.parametrize("blocks", [{0, 1}, {1}, {0}])
@pytest.mark.parametrize("overlap", [False, True], ids=["disjoint", "overlap"])
@pytest.mark.parametrize("refs", [False, True], ids=["image", "edit-refs"])
def test_matches_the_naive_reference(qwen, blocks, overlap, refs):
    """The whole patched Qwen-Image against the naive dense reference (masked in the chosen blocks, the unmasked
    regional stream in the others) with a background region, every text at its own positions computed from
    scratch; with Qwen-Image-Edit's reference-latent tokens after the image (base attention only)."""
    x = inputs(refs=refs)
    wrapper = wrapper_for(
        regional_cond([3, 5], background=True, overlap=overlap), beta=0.3, double_blocks=frozenset(blocks)
    )
    ours = run(qwen, wrapper, **x)
    plan = wrapper.plan(HEIGHT // 8, WIDTH // 8, BASE_LEN, 5 * 5 if refs else 0)
    assert plan.dense == overlap
    assert plan.length == sum(plan.text_lens) + BASE_LEN + 6 * 8 + (25 if refs else 0)
    calls = []
    reference = reference_override(plan, 0.3, blocks, set(), calls)
    context = torch.cat([wrapper.region_texts(plan), x["context"]], dim=1)
    positions = own_positions_from_scratch(qwen, x["x"], (*plan.text_lens, BASE_LEN), x.get("ref_latents"))
    expected = run(qwen, override=reference, patches_replace=positions, **{**x, "context": context})
    assert calls == list(range(DEPTH))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_a_block_replacement_already_there_is_chained(qwen):
    """Another pack's patches_replace['dit'] entry keeps running (and gets the re-based positions)."""
    x = inputs()
    seen = []

    def other(args, extra):
        seen.append(args["pe"].shape[2])
        return extra["original_block"](args)

    wrapper = wrapper_for(regional_cond([3, 5]))
    patched = run(qwen, wrapper, patches_replace={"dit": {("double_block", 1): other}}, **x)
    assert seen == [3 + 5 + BASE_LEN + 6 * 8]
    torch.testing.assert_close(patched, run(qwen, wrapper, **x), atol=0, rtol=0)


def test_the_model_is_untouched(qwen):
    """A regional call changes no weight, and the plain model gives the same result before and after it."""
    x = inputs()
    regional = wrapper_for(regional_cond([3, 5], background=True))
    family_checks.assert_untouched(qwen, lambda: run(qwen, **x), lambda: run(qwen, regional, **x))


def test_a_text_mask_that_pads_nothing_is_dropped_and_padding_is_refused(qwen):
    """Newer hosts hand Qwen-Image the prompt's padding mask; one that masks nothing changes nothing, one that pads
    is refused with a clear error (it has no columns for the region texts)."""
    from regional_layout.attention_patches.flux_patch import PATCH_KEY

    x = inputs()
    wrapper = wrapper_for(regional_cond([3, 5]))
    opts = {"cond_or_uncond": [0], "wrappers": {"diffusion_model": {PATCH_KEY: [wrapper]}}}
    with torch.no_grad():
        kept = qwen(
            x["x"],
            x["timestep"],
            x["context"],
            torch.ones(1, BASE_LEN, dtype=torch.long),
            transformer_options=dict(opts),
        )
        assert torch.equal(kept, run(qwen, wrapper, **x))
        padded = torch.ones(1, BASE_LEN, dtype=torch.long)
        padded[:, -2:] = 0
        with pytest.raises(ValueError, match="padding mask"):
            qwen(x["x"], x["timestep"], x["context"], padded, transformer_options=dict(opts))


def test_a_multi_frame_latent_is_refused(qwen):
    x = inputs()
    x["x"] = x["x"].expand(-1, -1, 2, -1, -1)
    with pytest.raises(ValueError, match="one-frame latent"):
        run(qwen, wrapper_for(regional_cond([3, 5])), **x)


def test_the_patch_node_detects_qwen_image(qwen):
    """The node finds the family from ComfyUI's model class, reads the blocks from `transformer_blocks`, refuses
    single-stream block lists (Qwen-Image has none) and embeddings of another width, naming the input."""
    import comfy.model_patcher
    from regional_layout.attention_patches.flux_patch import PATCH_KEY
    from regional_layout.nodes.regional_flux_patch import RegionalFluxPatch, model_family

    holder = torch.nn.Module()
    holder.diffusion_model = qwen
    model = comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu"))
    assert model_family(model) == (QWEN_IMAGE, qwen)
    cond = regional_cond([3, 5])
    node_inputs = dict(
        model=model,
        regional_cond=cond,
        base_ratio=0.0,
        control_steps=2,
        double_blocks="1",
        single_blocks="all",
        feather=0.0,
    )
    patched = RegionalFluxPatch.execute(**node_inputs).result[0]
    (wrapper,) = patched.wrappers["diffusion_model"][PATCH_KEY]
    assert wrapper.family is QWEN_IMAGE
    assert wrapper.options.double_blocks == {1} and not wrapper.options.single_blocks
    assert not model.wrappers.get("diffusion_model")
    x = inputs()
    torch.testing.assert_close(
        run(qwen, wrapper, **x), run(qwen, wrapper_for(cond, double_blocks=frozenset({1})), **x), atol=0, rtol=0
    )
    with pytest.raises(ValueError, match="single_blocks: Qwen-Image has no single-stream blocks"):
        RegionalFluxPatch.execute(**{**node_inputs, "single_blocks": "0"})
    narrow = type(cond)(cond.layout, tuple(e[..., :32] for e in cond.embeds), None)
    with pytest.raises(ValueError, match="regional_cond is 32 wide, the model expects 64"):
        RegionalFluxPatch.execute(**{**node_inputs, "regional_cond": narrow})
