"""Regional prompting on LongCat-Image (newer hosts only): ComfyUI's FLUX.1 Flux class with no pooled vector and
text token j at RoPE position j on axes 1 and 2 (params.txt_ids_dims = [1, 2]); model_base.LongCatImage shifts the
image grid by the base prompt's length through rope_options. The family checks on ComfyUI's own class at small
width with seeded random weights, at model level (the patch node's wrapper, called through the model's
DIFFUSION_MODEL wrapper chain), with rope_options as LongCatImage._apply_model sets them.

Text: LongCat-Image's encoder is Qwen2.5-VL 7B, far too large to write with random weights, so the conditioning is
random tensors of the model's (small) width. Each region text and the base text start at position 0, as each
prompt alone (attention_patches/text_positions.py); the reference computes those positions from scratch. Before
the family existed, such a model was taken for FLUX.1 and its region texts sat after one another."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from regional_layout.attention_patches.families import LONGCAT_IMAGE
from support.family_checks import assert_untouched, region_pixels, regional_wrapper, step_options, with_region_embedding
from support.regional_reference import random_regional_cond, reference_override

pytestmark = pytest.mark.newer_host("comfy.model_base:LongCatImage")

HEIGHT, WIDTH = 88, 120  # pixels, not multiples of 16: latent 11 x 15 (FLUX pads it), token grid 6 x 8
LATENT = (HEIGHT // 8, WIDTH // 8)
CTX = 64
BASE_LEN = 7
DEPTH = 2
REF = (9, 10)  # a reference latent (editing): 5 x 5 tokens after the image's


@pytest.fixture(scope="module")
def longcat():
    from rl_devkit.tiny_models import small_flux

    return small_flux(
        depth=DEPTH, depth_single_blocks=DEPTH, seed=13, vec_in_dim=None, guidance_embed=False, txt_ids_dims=[1, 2]
    )


def regional_cond(lengths, **kwargs):
    return random_regional_cond(WIDTH, HEIGHT, CTX, lengths, **kwargs)


def wrapper_for(cond, family=LONGCAT_IMAGE, **options):
    return regional_wrapper(cond, family, DEPTH, **options)


def inputs(batch=1, seed=0, refs=False):
    gen = torch.Generator().manual_seed(seed)
    x = dict(
        x=torch.randn(batch, 16, *LATENT, generator=gen),
        timestep=torch.full((batch,), 0.7),
        context=torch.randn(batch, BASE_LEN, CTX, generator=gen),
    )
    if refs:
        x["ref_latents"] = [torch.randn(batch, 16, *REF, generator=gen)]
    return x


def rope_options(base_len=BASE_LEN):
    """What model_base.LongCatImage._apply_model adds: the image grid shifted by the (base) prompt's length."""
    return {"shift_t": 1.0, "shift_y": float(base_len), "shift_x": float(base_len)}


def run(model, wrapper=None, cond_or_uncond=(0,), override=None, patches_replace=None, **x):
    opts = step_options(wrapper, cond_or_uncond, override, patches_replace, rope_options=rope_options())
    with torch.no_grad():
        return model(x["x"], x["timestep"], x["context"], None, None, x.get("ref_latents"), transformer_options=opts)


def own_positions_from_scratch(model, x, text_lens, base_len, ref_latents=None):
    """patches_replace entries that hand every block a RoPE table computed from scratch (not gathered): each region
    text and the base text at 0..n-1 on axes 1 and 2, then the model's own image ids (shifted by rope_options) and
    reference-latent ids."""
    opts = {"rope_options": rope_options()}
    _, img_ids = model.process_img(x, transformer_options=opts)
    for ref in ref_latents or []:  # FLUX.1's default "offset" method, one reference: time index 1, no offset
        img_ids = torch.cat([img_ids, model.process_img(ref, index=1, transformer_options=opts)[1]], dim=1)
    positions = torch.cat([torch.arange(n) for n in (*text_lens, base_len)]).float()
    txt_ids = torch.zeros(x.shape[0], len(positions), 3)
    txt_ids[:, :, 1] = positions
    txt_ids[:, :, 2] = positions
    pe = model.pe_embedder(torch.cat([txt_ids, img_ids], dim=1))
    patch = lambda args, extra: extra["original_block"]({**args, "pe": pe})  # noqa: E731
    kinds = [("double_block", len(model.double_blocks)), ("single_block", len(model.single_blocks))]
    return {"dit": {(kind, i): patch for kind, count in kinds for i in range(count)}}


def test_the_patch_node_tells_longcat_from_flux1(longcat):
    import comfy.model_patcher
    from regional_layout.attention_patches.families import FLUX1
    from regional_layout.nodes.regional_flux_patch import model_family
    from rl_devkit.tiny_models import small_flux

    def patcher(diffusion_model):
        holder = torch.nn.Module()
        holder.diffusion_model = diffusion_model
        return comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu"))

    assert model_family(patcher(longcat)) == (LONGCAT_IMAGE, longcat)
    assert model_family(patcher(small_flux(depth=1, depth_single_blocks=1)))[0] is FLUX1
    assert LONGCAT_IMAGE.blocks(longcat) == (DEPTH, DEPTH)


@pytest.mark.parametrize("changed", [0, 1])
@pytest.mark.parametrize("refs", [False, True], ids=["image", "edit-refs"])
def test_region_isolation(longcat, changed, refs):
    x = inputs(refs=refs)
    first = regional_cond([4, 6], seed=1)
    second = with_region_embedding(first, regional_cond([4, 6], seed=2), changed)
    a, b = run(longcat, wrapper_for(first), **x), run(longcat, wrapper_for(second), **x)
    kept, own = (region_pixels(wrapper_for(first), i, LATENT, BASE_LEN) for i in (1 - changed, changed))
    assert kept.any() and own.any()
    assert torch.equal(a[..., kept], b[..., kept])
    assert not torch.equal(a[..., own], b[..., own])


def test_each_region_text_sits_at_its_own_positions(longcat):
    """The order of the region texts does not matter (each starts at position 0, as alone); with FLUX.1's rule
    (the texts concatenated, so each after the ones before it) the order changes the picture."""
    x = inputs()
    forward, backward = regional_cond([4, 6], seed=3), regional_cond([4, 6], seed=3, order=[1, 0])
    a, b = run(longcat, wrapper_for(forward), **x), run(longcat, wrapper_for(backward), **x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    concatenated = dataclasses.replace(LONGCAT_IMAGE, text_positions="shared")
    c = run(longcat, wrapper_for(forward, concatenated), **x)
    d = run(longcat, wrapper_for(backward, concatenated), **x)
    assert (c - d).abs().max() > 1e-3


@pytest.mark.parametrize("options", [dict(beta=1.0), dict(control_steps=0)], ids=["beta-1", "zero-steps"])
def test_bit_identical_when_the_method_is_off(longcat, options):
    x = inputs()
    cond = regional_cond([3, 5], background=True)
    plain = run(longcat, **x)
    assert torch.equal(run(longcat, wrapper_for(cond, **options), **x), plain)
    assert not torch.equal(run(longcat, wrapper_for(cond), **x), plain)


def test_batch_with_a_negative_prompt(longcat):
    wrapper = wrapper_for(regional_cond([3, 5], background=True), beta=0.2)
    a, b = inputs(seed=1), inputs(seed=2)
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    mixed = run(longcat, wrapper, cond_or_uncond=(0, 1), **both)
    assert mixed.shape == (2, 16, *LATENT)
    assert torch.equal(mixed[1:], run(longcat, cond_or_uncond=(1,), **b))
    torch.testing.assert_close(mixed[:1], run(longcat, wrapper, **a), atol=1e-5, rtol=0)


@pytest.mark.parametrize("double,single", [({0, 1}, {0, 1}), ({0}, {1}), (set(), {0, 1})])
@pytest.mark.parametrize("masks", ["disjoint", "overlap", "soft"])
@pytest.mark.parametrize("refs", [False, True], ids=["image", "edit-refs"])
def test_matches_the_naive_reference(longcat, double, single, masks, refs):
    x = inputs(refs=refs)
    wrapper = wrapper_for(
        regional_cond([3, 5], background=True, overlap=masks == "overlap"),
        beta=0.3,
        double_blocks=frozenset(double),
        single_blocks=frozenset(single),
        feather=48.0 if masks == "soft" else 0.0,
    )
    ours = run(longcat, wrapper, **x)
    n_ref = 25 if refs else 0
    plan = wrapper.plan(*LATENT, BASE_LEN, n_ref)
    assert plan.dense == (masks != "disjoint") and plan.masks.soft == (masks == "soft")
    calls = []
    reference = reference_override(plan, 0.3, double, single, calls, soft=masks == "soft")
    context = torch.cat([wrapper.region_texts(plan), x["context"]], dim=1)
    positions = own_positions_from_scratch(longcat, x["x"], plan.text_lens, BASE_LEN, x.get("ref_latents"))
    expected = run(longcat, override=reference, patches_replace=positions, **{**x, "context": context})
    assert calls == [0, 1, 0, 1]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_the_model_is_untouched(longcat):
    x = inputs()
    assert_untouched(longcat, lambda: run(longcat, **x), lambda: run(longcat, wrapper_for(regional_cond([3, 5])), **x))
