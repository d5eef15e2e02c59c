"""Regional prompting on Z-Image (ComfyUI's Lumina2 NextDiT with Z-Image's configuration: single-stream `layers`
over [caption | image], each padded to a multiple of 32 with learnt pad tokens, after a caption-only
`context_refiner` and an image-only `noise_refiner`): the family checks on ComfyUI's own class with seeded random
weights, at model level (the patch node's wrapper, called through the model's DIFFUSION_MODEL wrapper chain).
The region texts are followed by zero filler up to a multiple of 32 (no token sees it), so the base text keeps its
own pad tokens and its offsets to the image; the caption refiner keeps every text to itself."""

from __future__ import annotations

import pytest
import torch

from regional_layout.attention_patches.families import ZIMAGE
from support import family_checks
from support.regional_reference import random_regional_cond, reference_override

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

HEIGHT, WIDTH = (
    88,
    120,
)  # pixels, not multiples of 16: latent 11 x 15 (odd, padded), token grid 6 x 8 (48, padded to 64)
CTX = 48
BASE_LEN = 7
DEPTH = 2
REFINERS = 2


@pytest.fixture(scope="module")
def zimage():
    from rl_devkit.tiny_models import small_zimage

    return small_zimage(n_layers=DEPTH, n_refiner_layers=REFINERS, cap_feat_dim=CTX, seed=8)


def regional_cond(lengths, **kwargs):
    return random_regional_cond(WIDTH, HEIGHT, CTX, lengths, **kwargs)


def wrapper_for(cond, family=ZIMAGE, **options):
    return family_checks.regional_wrapper(cond, family, DEPTH, **options)


def inputs(batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, HEIGHT // 8, WIDTH // 8, generator=gen),
        timestep=torch.full((batch,), 0.7),
        context=torch.randn(batch, BASE_LEN, CTX, generator=gen),
    )


def run(model, wrapper=None, cond_or_uncond=(0,), override=None, **x):
    """The model's forward as ComfyUI calls it: num_tokens positional, transformer_options by keyword."""
    opts = family_checks.step_options(wrapper, cond_or_uncond, override)
    with torch.no_grad():
        return model(x["x"], x["timestep"], x["context"], x["context"].shape[1], transformer_options=opts)


def region_pixels(wrapper, index):
    return family_checks.region_pixels(wrapper, index, (HEIGHT // 8, WIDTH // 8), BASE_LEN, patch=2)


def own_positions_from_scratch(model, plan):
    """A turn for the reference: ComfyUI's own RoPE (the model's EmbedND, flux.math.apply_rope) moves token j of
    region text i from where the concatenated caption puts it (1 + its index) to where that prompt alone, padded to
    32, meets the image: T + 1 - (P_i - j), T the whole padded caption, P_i the prompt's padded length."""
    from comfy.ldm.flux.math import apply_rope

    ids = torch.zeros(1, plan.length, 3)
    start = 0
    for n in plan.text_lens:
        padded = n + (-n) % 32
        for j in range(n):
            ids[0, start + j, 0] = (plan.img_start + 1 - (padded - j)) - (start + j + 1)
        start += n
    pe = model.rope_embedder(ids)  # [1, 1, L, D / 2, 2, 2]: identity where the shift is 0
    return lambda q, k: apply_rope(q, k, pe)


def test_the_family_reads_this_hosts_forward(zimage):
    assert ZIMAGE.forward_names(zimage) == ZIMAGE.forward_args
    assert ZIMAGE.blocks(zimage) == (DEPTH,)


def test_the_plan_follows_the_models_padding():
    """Region texts of 3 + 5 tokens take 24 filler tokens; the base text (7) its own 25 pad tokens; the 48 image
    tokens 16 pad tokens after the grid (base attention only)."""
    plan = wrapper_for(regional_cond([3, 5])).plan(HEIGHT // 8, WIDTH // 8, BASE_LEN)
    assert (plan.text_lens, plan.filler, plan.base_len, plan.n_img, plan.n_extra) == ((3, 5), 24, 32, 48, 16)
    assert plan.base_start == 32 and plan.length == 32 + 32 + 64


@pytest.mark.parametrize("changed", [0, 1])
def test_region_isolation(zimage, changed):
    """beta = 0, every block, every step: changing one region's prompt leaves the other region's output latent
    bit-identical and changes its own (the caption refiner keeps the texts apart too)."""
    x = inputs()
    lengths = [4, 6]
    first = regional_cond(lengths, seed=1)
    second = family_checks.with_region_embedding(first, regional_cond(lengths, seed=2), changed)
    a, b = run(zimage, wrapper_for(first), **x), run(zimage, wrapper_for(second), **x)
    kept, own = region_pixels(wrapper_for(first), 1 - changed), region_pixels(wrapper_for(first), changed)
    assert torch.equal(a[..., kept], b[..., kept])
    assert not torch.equal(a[..., own], b[..., own])


@pytest.mark.parametrize("options", [dict(beta=1.0), dict(control_steps=0)], ids=["beta-1", "zero-steps"])
def test_bit_identical_when_the_method_is_off(zimage, options):
    x = inputs()
    cond = regional_cond([3, 5], background=True)
    plain = run(zimage, **x)
    assert torch.equal(run(zimage, wrapper_for(cond, **options), **x), plain)
    assert not torch.equal(run(zimage, wrapper_for(cond), **x), plain)


def test_batch_with_a_negative_prompt(zimage):
    """Batch 2 with CFG at 88 x 120 px: the negative row is the plain model's, bit for bit; the positive row is
    the regional result of that row alone."""
    wrapper = wrapper_for(regional_cond([3, 5], background=True), beta=0.2)
    a, b = inputs(seed=1), inputs(seed=2)
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    mixed = run(zimage, wrapper, cond_or_uncond=(0, 1), **both)
    assert mixed.shape == (2, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(mixed[1:], run(zimage, cond_or_uncond=(1,), **b))
    torch.testing.assert_close(mixed[:1], run(zimage, wrapper, **a), atol=1e-5, rtol=0)


@pytest.mark.parametrize("masks", ["disjoint", "overlap", "soft"])
@pytest.mark.parametrize("blocks", [{0, 1}, {1}, {0}])
def test_matches_the_naive_reference(zimage, masks, blocks):
    """The whole patched Z-Image against the naive dense reference (masked in the chosen blocks, the unmasked
    regional stream in the others; the caption refiner block-diagonal per text; the filler cut out) with a
    background region, for disjoint, overlapping and soft (feathered) masks, on the same concatenated caption."""
    x = inputs()
    wrapper = wrapper_for(
        regional_cond([3, 5], background=True, overlap=masks == "overlap"),
        beta=0.3,
        double_blocks=frozenset(blocks),
        feather=48.0 if masks == "soft" else 0.0,
    )
    ours = run(zimage, wrapper, **x)
    plan = wrapper.plan(HEIGHT // 8, WIDTH // 8, BASE_LEN)
    assert plan.dense == (masks != "disjoint") and plan.masks.soft == (masks == "soft")
    assert plan.filler and plan.n_extra
    calls = []
    turn = own_positions_from_scratch(zimage, plan)
    reference = reference_override(
        plan, 0.3, blocks, set(), calls, soft=masks == "soft", text_refiners=REFINERS, turn=turn
    )
    filler = torch.zeros(1, plan.filler, CTX)
    context = torch.cat([wrapper.region_texts(plan), filler, x["context"]], dim=1)
    expected = run(zimage, override=reference, **{**x, "context": context})
    assert calls == list(range(DEPTH))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_each_region_text_keeps_its_own_positions(zimage):
    """The order of the region texts in the caption does not matter: every text meets the image at the offsets
    it has alone. With the positions the concatenation gives (no turn), the order changes the picture."""
    import dataclasses

    x = inputs()
    forward, backward = regional_cond([4, 6], seed=3), regional_cond([4, 6], seed=3, order=[1, 0])
    a, b = run(zimage, wrapper_for(forward), **x), run(zimage, wrapper_for(backward), **x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    shifted = dataclasses.replace(ZIMAGE, text_positions="shared")
    c, d = run(zimage, wrapper_for(forward, shifted), **x), run(zimage, wrapper_for(backward, shifted), **x)
    assert (c - d).abs().max() > 1e-3


def test_the_filler_is_no_key():
    """The filler's q, k and v reach no other row, in the chosen blocks (grouped and dense paths) and the others
    (the unmasked regional stream): with other filler values every other row is bit-identical."""
    from regional_layout.attention_patches.regional_attention import (
        regional_attention,
        separate_text_attention,
        unselected_block_attention,
    )

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)

    for overlap in (False, True):
        plan = wrapper_for(regional_cond([3, 5], background=True, overlap=overlap)).plan(
            HEIGHT // 8, WIDTH // 8, BASE_LEN
        )
        gen = torch.Generator().manual_seed(5)
        q, k, v = (torch.randn(1, 2, plan.length, 8, generator=gen) for _ in range(3))
        other = [t.clone() for t in (q, k, v)]
        filler = slice(plan.n_text, plan.base_start)
        for t in other:
            t[:, :, filler] = 100 * torch.randn(1, 2, plan.filler, 8, generator=gen)
        keep = torch.ones(plan.length, dtype=torch.bool)
        keep[filler] = False
        for beta in (0.0, 0.3):
            for a, b in (
                (regional_attention(q, k, v, plan, beta), regional_attention(*other, plan, beta)),
                (
                    unselected_block_attention(q, k, v, plan, beta, sdpa),
                    unselected_block_attention(*other, plan, beta, sdpa),
                ),
            ):
                assert torch.equal(a[:, keep], b[:, keep]) and not a[:, ~keep].any()
        text = slice(0, plan.img_start)
        a = separate_text_attention(q[:, :, text], k[:, :, text], v[:, :, text], plan, sdpa)
        b = separate_text_attention(*(t[:, :, text] for t in other), plan, sdpa)
        assert torch.equal(a[:, keep[text]], b[:, keep[text]]) and not a[:, ~keep[text]].any()


def test_the_model_is_untouched(zimage):
    x = inputs()
    regional = wrapper_for(regional_cond([3, 5], background=True))
    family_checks.assert_untouched(zimage, lambda: run(zimage, **x), lambda: run(zimage, regional, **x))


def test_the_patch_node_detects_zimage(zimage):
    """The node finds the family from ComfyUI's NextDiT with pad tokens (Lumina 2 itself has none), reads the
    blocks from `layers` and the text width from cap_embedder, and leaves its input model unwrapped."""
    import comfy.model_patcher
    from regional_layout.attention_patches.flux_patch import PATCH_KEY
    from regional_layout.nodes.regional_flux_patch import RegionalFluxPatch, context_width, model_family

    holder = torch.nn.Module()
    holder.diffusion_model = zimage
    model = comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu"))
    assert model_family(model) == (ZIMAGE, zimage)
    assert context_width(zimage) == CTX
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
    assert wrapper.family is ZIMAGE
    assert wrapper.options.double_blocks == {1} and not wrapper.options.single_blocks
    assert not model.wrappers.get("diffusion_model")
    x = inputs()
    torch.testing.assert_close(
        run(zimage, wrapper, **x), run(zimage, wrapper_for(cond, double_blocks=frozenset({1})), **x), atol=0, rtol=0
    )
    narrow = type(cond)(cond.layout, tuple(e[..., :32] for e in cond.embeds), None)
    with pytest.raises(ValueError, match=f"regional_cond is 32 wide, the model expects {CTX}"):
        RegionalFluxPatch.execute(**{**node_inputs, "regional_cond": narrow})


def test_zimage_omni_is_refused_by_name():
    """Z-Image Omni (v0.30: SigLIP reference-image tokens among the caption's) is not a layout the pack plans for:
    the node says so instead of failing inside the text refiner."""
    import comfy.model_patcher
    from regional_layout.nodes.regional_flux_patch import model_family
    from rl_devkit.tiny_models import small_zimage

    omni = small_zimage(n_layers=1, n_refiner_layers=1, seed=3)
    omni.siglip_embedder = torch.nn.Identity()  # what ComfyUI builds when the file has SigLIP weights
    holder = torch.nn.Module()
    holder.diffusion_model = omni
    with pytest.raises(ValueError, match="Z-Image Omni .* not support yet; connect Z-Image"):
        model_family(comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu")))
