"""Regional prompting on Chroma (FLUX's blocks, T5 only, modulations from its distilled guidance layer): the family
checks on ComfyUI's own Chroma class with seeded random weights, at model level (the patch node's wrapper, called
through Chroma's DIFFUSION_MODEL wrapper chain)."""

from __future__ import annotations

import pytest
import torch

from regional_layout.attention_patches.families import CHROMA
from support import family_checks
from support.regional_reference import random_regional_cond, reference_override

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

HEIGHT, WIDTH = 88, 120  # pixels, not multiples of 16: latent 11 x 15 (odd, padded like FLUX), token grid 6 x 8
CTX = 64


@pytest.fixture(scope="module")
def chroma():
    from rl_devkit.tiny_models import small_chroma

    return small_chroma(depth=2, depth_single_blocks=2, seed=5)


def regional_cond(lengths, **kwargs):
    return random_regional_cond(WIDTH, HEIGHT, CTX, lengths, **kwargs)


def wrapper_for(cond, **options):
    return family_checks.regional_wrapper(cond, CHROMA, 2, **options)


def inputs(batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, HEIGHT // 8, WIDTH // 8, generator=gen),
        timestep=torch.full((batch,), 0.7),
        context=torch.randn(batch, 7, CTX, generator=gen),
        guidance=torch.zeros(batch),
    )


def run(model, wrapper=None, cond_or_uncond=(0,), override=None, **x):
    opts = family_checks.step_options(wrapper, cond_or_uncond, override)
    with torch.no_grad():
        return model(x["x"], x["timestep"], x["context"], x["guidance"], transformer_options=opts)


def region_pixels(wrapper, index):
    """The latent pixels of region `index`'s tokens (2x2 latent pixels per token, cut to the odd latent)."""
    return family_checks.region_pixels(wrapper, index, (HEIGHT // 8, WIDTH // 8), 7, patch=2)


@pytest.mark.parametrize("changed", [0, 1])
def test_region_isolation(chroma, changed):
    """beta = 0, every block, every step: changing one region's prompt leaves the other region's output latent
    bit-identical and changes its own."""
    x = inputs()
    lengths = [4, 6]
    first = regional_cond(lengths, seed=1)
    second = family_checks.with_region_embedding(first, regional_cond(lengths, seed=2), changed)
    a, b = run(chroma, wrapper_for(first), **x), run(chroma, wrapper_for(second), **x)
    kept, own = region_pixels(wrapper_for(first), 1 - changed), region_pixels(wrapper_for(first), changed)
    assert torch.equal(a[..., kept], b[..., kept])
    assert not torch.equal(a[..., own], b[..., own])


@pytest.mark.parametrize("options", [dict(beta=1.0), dict(control_steps=0)], ids=["beta-1", "zero-steps"])
def test_bit_identical_when_the_method_is_off(chroma, options):
    x = inputs()
    cond = regional_cond([3, 5], background=True)
    plain = run(chroma, **x)
    assert torch.equal(run(chroma, wrapper_for(cond, **options), **x), plain)
    assert not torch.equal(run(chroma, wrapper_for(cond), **x), plain)


def test_batch_with_a_negative_prompt(chroma):
    """Batch 2 with CFG: the negative row is the plain model's, bit for bit; the positive row is the regional
    result of that row alone."""
    wrapper = wrapper_for(regional_cond([3, 5], background=True), beta=0.2)
    a, b = inputs(seed=1), inputs(seed=2)
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    mixed = run(chroma, wrapper, cond_or_uncond=(0, 1), **both)
    assert torch.equal(mixed[1:], run(chroma, cond_or_uncond=(1,), **b))
    torch.testing.assert_close(mixed[:1], run(chroma, wrapper, **a), atol=1e-5, rtol=0)


@pytest.mark.parametrize("double,single", [({0, 1}, {0, 1}), ({0}, {1}), (set(), {0, 1})])
@pytest.mark.parametrize("overlap", [False, True], ids=["disjoint", "overlap"])
def test_matches_the_naive_reference(chroma, double, single, overlap):
    """The whole patched Chroma against the naive dense reference (masked in the chosen blocks, the unmasked
    regional stream in the others), with a background region."""
    x = inputs()
    wrapper = wrapper_for(
        regional_cond([3, 5], background=True, overlap=overlap),
        beta=0.3,
        double_blocks=frozenset(double),
        single_blocks=frozenset(single),
    )
    ours = run(chroma, wrapper, **x)
    plan = wrapper.plan(HEIGHT // 8, WIDTH // 8, 7)
    assert plan.dense == overlap
    calls = []
    reference = reference_override(plan, 0.3, double, single, calls)
    context = torch.cat([wrapper.region_texts(plan), x["context"]], dim=1)
    expected = run(chroma, override=reference, **{**x, "context": context})
    assert calls == [0, 1, 0, 1]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_the_model_is_untouched(chroma):
    """A regional call changes no weight, and the plain model gives the same result before and after it."""
    x = inputs()
    regional = wrapper_for(regional_cond([3, 5], background=True))
    family_checks.assert_untouched(chroma, lambda: run(chroma, **x), lambda: run(chroma, regional, **x))
