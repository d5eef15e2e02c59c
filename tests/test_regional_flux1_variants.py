"""Regional prompting on the FLUX.1 variants that change the image tokens: Kontext (reference-image latents whose
tokens follow the image's, with their own RoPE offset) and Fill / Canny / Depth (channels concatenated to the latent
before the model: Fill 16 + 16 masked-image + 64 mask = 96, Canny/Depth 16 + 16 control latent = 32). The family
checks on ComfyUI's own Flux class at small width with seeded random weights, at model level (the patch node's
wrapper, called through the model's DIFFUSION_MODEL wrapper chain), against the naive dense reference.

Reference tokens take the base attention only (no region owns them, as in the official code, which has none), and
the concatenated channels only widen each token's input: the token grid, and so every mask, is the latent's.
"""

from __future__ import annotations

import pytest
import torch

from regional_layout.attention_patches.families import FLUX1
from support.family_checks import assert_untouched, region_pixels, regional_wrapper, step_options, with_region_embedding
from support.regional_reference import random_regional_cond, reference_override

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

HEIGHT, WIDTH = 88, 120  # pixels, not multiples of 16: latent 11 x 15 (FLUX pads it), token grid 6 x 8
LATENT = (HEIGHT // 8, WIDTH // 8)
CTX = 64
BASE_LEN = 7
DEPTH = 2
REF = (9, 10)  # Kontext's reference latent, another size: 5 x 5 tokens after the image's
VARIANTS = {"kontext": 16, "fill": 96, "canny-depth": 32}  # model input channels per variant


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request):
    from rl_devkit.tiny_models import small_flux

    name = request.param
    return name, small_flux(depth=DEPTH, depth_single_blocks=DEPTH, seed=11, in_channels=VARIANTS[name])


def regional_cond(lengths, **kwargs):
    return random_regional_cond(WIDTH, HEIGHT, CTX, lengths, **kwargs)


def wrapper_for(cond, **options):
    return regional_wrapper(cond, FLUX1, DEPTH, **options)


def inputs(name, batch=1, seed=0):
    """The model's inputs as ComfyUI hands them over: for Fill/Canny/Depth the latent with its concatenated
    channels (BaseModel._apply_model concatenates c_concat), for Kontext a reference latent."""
    gen = torch.Generator().manual_seed(seed)
    x = dict(
        x=torch.randn(batch, VARIANTS[name], *LATENT, generator=gen),
        timestep=torch.full((batch,), 0.7),
        context=torch.randn(batch, BASE_LEN, CTX, generator=gen),
        y=torch.randn(batch, 32, generator=gen),
        guidance=torch.full((batch,), 3.5),
    )
    if name == "kontext":
        x["ref_latents"] = [torch.randn(batch, 16, *REF, generator=gen)]
    return x


def n_ref(name):
    return (REF[0] + 1) // 2 * ((REF[1] + 1) // 2) if name == "kontext" else 0


def run(model, wrapper=None, cond_or_uncond=(0,), override=None, **x):
    opts = step_options(wrapper, cond_or_uncond, override)
    with torch.no_grad():
        return model(
            x["x"], x["timestep"], x["context"], x["y"], x["guidance"], x.get("ref_latents"), transformer_options=opts
        )


@pytest.mark.parametrize("changed", [0, 1])
def test_region_isolation(variant, changed):
    """beta = 0, every block, every step: changing one region's prompt leaves the other region's output
    bit-identical and changes its own."""
    name, model = variant
    x = inputs(name)
    first = regional_cond([4, 6], seed=1)
    second = with_region_embedding(first, regional_cond([4, 6], seed=2), changed)
    a, b = run(model, wrapper_for(first), **x), run(model, wrapper_for(second), **x)
    assert a.shape == (1, 16, *LATENT)
    kept, own = (region_pixels(wrapper_for(first), i, LATENT, BASE_LEN) for i in (1 - changed, changed))
    assert kept.any() and own.any()
    assert torch.equal(a[..., kept], b[..., kept])
    assert not torch.equal(a[..., own], b[..., own])


@pytest.mark.parametrize("options", [dict(beta=1.0), dict(control_steps=0)], ids=["beta-1", "zero-steps"])
def test_bit_identical_when_the_method_is_off(variant, options):
    name, model = variant
    x = inputs(name)
    cond = regional_cond([3, 5], background=True)
    plain = run(model, **x)
    assert torch.equal(run(model, wrapper_for(cond, **options), **x), plain)
    assert not torch.equal(run(model, wrapper_for(cond), **x), plain)


def test_batch_with_a_negative_prompt(variant):
    """Batch 2 with CFG: the negative row is the plain model's, bit for bit; the positive row is the regional result
    of that row alone (concatenated channels and reference latents split with the rows)."""
    name, model = variant
    wrapper = wrapper_for(regional_cond([3, 5], background=True), beta=0.2)
    a, b = inputs(name, seed=1), inputs(name, seed=2)
    both = {k: torch.cat([a[k], b[k]]) for k in a if k != "ref_latents"}
    if "ref_latents" in a:
        both["ref_latents"] = [torch.cat([a["ref_latents"][0], b["ref_latents"][0]])]
    mixed = run(model, wrapper, cond_or_uncond=(0, 1), **both)
    assert torch.equal(mixed[1:], run(model, cond_or_uncond=(1,), **b))
    torch.testing.assert_close(mixed[:1], run(model, wrapper, **a), atol=1e-5, rtol=0)


@pytest.mark.parametrize("double,single", [({0, 1}, {0, 1}), ({0}, {1})])
@pytest.mark.parametrize("masks", ["disjoint", "overlap", "soft"])
def test_matches_the_naive_reference(variant, double, single, masks):
    """The whole patched model against the naive dense reference (masked in the chosen blocks, the unmasked regional
    stream in the others) with a background region; Kontext's reference tokens after the image take the base
    attention only."""
    name, model = variant
    x = inputs(name)
    wrapper = wrapper_for(
        regional_cond([3, 5], background=True, overlap=masks == "overlap"),
        beta=0.3,
        double_blocks=frozenset(double),
        single_blocks=frozenset(single),
        feather=48.0 if masks == "soft" else 0.0,
    )
    ours = run(model, wrapper, **x)
    plan = wrapper.plan(*LATENT, BASE_LEN, n_ref(name))
    tokens = ((LATENT[0] + 1) // 2) * ((LATENT[1] + 1) // 2)
    assert plan.length == sum(plan.text_lens) + BASE_LEN + tokens + n_ref(name)
    calls = []
    reference = reference_override(plan, 0.3, double, single, calls, soft=masks == "soft")
    context = torch.cat([wrapper.region_texts(plan), x["context"]], dim=1)
    expected = run(model, override=reference, **{**x, "context": context})
    assert calls == [0, 1, 0, 1]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_the_model_is_untouched(variant):
    name, model = variant
    x = inputs(name)
    assert_untouched(model, lambda: run(model, **x), lambda: run(model, wrapper_for(regional_cond([3, 5])), **x))


@pytest.mark.parametrize("name", ["fill", "canny-depth"])
def test_a_latent_without_the_concatenated_channels_is_refused(name):
    """A Fill/Canny/Depth model handed a bare 16-channel latent (no InpaintModelConditioning / InstructPixToPix
    conditioning) gets an error naming the latent, not a shape error deep in the model."""
    from rl_devkit.tiny_models import small_flux

    model = small_flux(depth=1, depth_single_blocks=1, seed=12, in_channels=VARIANTS[name])
    x = inputs(name)
    x["x"] = x["x"][:, :16]
    expected = f"needs {VARIANTS[name]} input channels: a 16-channel latent .* InpaintModelConditioning"
    with pytest.raises(ValueError, match=expected):
        run(model, wrapper_for(regional_cond([3, 5]), double_blocks=frozenset({0}), single_blocks=frozenset({0})), **x)
