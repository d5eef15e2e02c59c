"""Regional prompting on Krea 2 (newer hosts only: ComfyUI's krea2 SingleStreamDiT): single-stream `blocks` over
[text | image] with every text token at RoPE position 0, after `txtfusion`, which fuses the 12 Qwen3-VL layers of
each token (layerwise_blocks, across the layers of one token) and then refines the text (refiner_blocks, across
all text tokens). The family checks on ComfyUI's own class at small width with seeded random weights, at model
level (the patch node's wrapper, called through the model's DIFFUSION_MODEL wrapper chain).

Text: Qwen3-VL 4B is far too large to write with random weights, so the conditioning is random tensors of the
model's (small) width, txtlayers x txtdim. Every region text and the base text are fused as that prompt alone:
the refiner keeps each text to itself (the per-token steps are so already)."""

from __future__ import annotations

import pytest
import torch

from regional_layout.attention_patches.families import KREA2
from support.family_checks import assert_untouched, region_pixels, regional_wrapper, step_options, with_region_embedding
from support.regional_reference import random_regional_cond, reference_override

pytestmark = pytest.mark.newer_host("comfy.ldm.krea2.model:SingleStreamDiT")

HEIGHT, WIDTH = 88, 120  # pixels, not multiples of 16: latent 11 x 15 (the model pads it), token grid 6 x 8
LATENT = (HEIGHT // 8, WIDTH // 8)
TXTLAYERS, TXTDIM = 3, 32
CTX = TXTLAYERS * TXTDIM  # the encoder's layers side by side per token
BASE_LEN = 7
DEPTH = 2
FUSION = 2  # ComfyUI's TextFusionTransformer: 2 layerwise blocks, then 2 refiner blocks


@pytest.fixture(scope="module")
def krea2():
    from rl_devkit.tiny_models import small_krea2

    return small_krea2(layers=DEPTH, txtdim=TXTDIM, txtlayers=TXTLAYERS, seed=21)


def regional_cond(lengths, **kwargs):
    return random_regional_cond(WIDTH, HEIGHT, CTX, lengths, **kwargs)


def wrapper_for(cond, **options):
    return regional_wrapper(cond, KREA2, DEPTH, **options)


REF = (9, 10)  # a reference latent (editing): 5 x 5 tokens after the image's, with a ref_latents_method


def inputs(batch=1, seed=0, refs=None):
    """`refs`: None, or the ref_latents_method ("index", or "" for a reference latent the model drops)."""
    gen = torch.Generator().manual_seed(seed)
    x = dict(
        x=torch.randn(batch, 16, 1, *LATENT, generator=gen),  # the Wan 2.1 latent: one frame
        timestep=torch.full((batch,), 0.7),
        context=torch.randn(batch, BASE_LEN, CTX, generator=gen),
    )
    if refs is not None:
        x["ref_latents"] = [torch.randn(batch, 16, 1, *REF, generator=gen)]
        if refs:
            x["ref_latents_method"] = refs
    return x


def run(model, wrapper=None, cond_or_uncond=(0,), override=None, **x):
    """The model's forward as ComfyUI calls it: (x, timesteps, context, attention_mask, ref_latents, options,
    ref_latents_method=...)."""
    opts = step_options(wrapper, cond_or_uncond, override, **x.pop("extra", {}))
    method = {"ref_latents_method": x["ref_latents_method"]} if "ref_latents_method" in x else {}
    with torch.no_grad():
        return model(x["x"], x["timestep"], x["context"], None, x.get("ref_latents"), opts, **method)


def test_the_patch_node_detects_krea2(krea2):
    """The node finds the family from ComfyUI's SingleStreamDiT, reads its blocks and the text width
    (txtlayers x txtdim), takes only single blocks, and leaves its input model unwrapped."""
    import comfy.model_patcher
    from regional_layout.attention_patches.flux_patch import PATCH_KEY
    from regional_layout.nodes.regional_flux_patch import RegionalFluxPatch, context_width, model_family

    holder = torch.nn.Module()
    holder.diffusion_model = krea2
    model = comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu"))
    assert model_family(model) == (KREA2, krea2)
    assert KREA2.forward_names(krea2) == KREA2.forward_args and KREA2.blocks(krea2) == (DEPTH,)
    assert context_width(krea2) == CTX
    cond = regional_cond([3, 5])
    node_inputs = dict(
        model=model, regional_cond=cond, base_ratio=0.0, control_steps=2, double_blocks="all", single_blocks="1"
    )
    patched = RegionalFluxPatch.execute(**node_inputs, feather=0.0).result[0]
    (wrapper,) = patched.wrappers["diffusion_model"][PATCH_KEY]
    assert wrapper.family is KREA2 and wrapper.options.single_blocks == {1} and not wrapper.options.double_blocks
    assert not model.wrappers.get("diffusion_model")
    x = inputs()
    assert torch.equal(run(krea2, wrapper, **x), run(krea2, wrapper_for(cond, single_blocks=frozenset({1})), **x))
    with pytest.raises(ValueError, match="has no double-stream blocks"):
        RegionalFluxPatch.execute(**{**node_inputs, "double_blocks": "0"}, feather=0.0)


@pytest.mark.parametrize("changed", [0, 1])
@pytest.mark.parametrize("refs", [None, "index", ""], ids=["image", "edit-refs", "refs-dropped"])
def test_region_isolation(krea2, changed, refs):
    """beta = 0, every block, every step: changing one region's prompt leaves the other region's output latent
    bit-identical and changes its own (the text refiner keeps the texts apart too)."""
    x = inputs(refs=refs)
    first = regional_cond([4, 6], seed=1)
    second = with_region_embedding(first, regional_cond([4, 6], seed=2), changed)
    a, b = run(krea2, wrapper_for(first), **x), run(krea2, wrapper_for(second), **x)
    kept, own = (region_pixels(wrapper_for(first), i, LATENT, BASE_LEN) for i in (1 - changed, changed))
    assert kept.any() and own.any()
    assert torch.equal(a[..., kept], b[..., kept])
    assert not torch.equal(a[..., own], b[..., own])


@pytest.mark.parametrize("options", [dict(beta=1.0), dict(control_steps=0)], ids=["beta-1", "zero-steps"])
def test_bit_identical_when_the_method_is_off(krea2, options):
    x = inputs()
    cond = regional_cond([3, 5], background=True)
    plain = run(krea2, **x)
    assert torch.equal(run(krea2, wrapper_for(cond, **options), **x), plain)
    assert not torch.equal(run(krea2, wrapper_for(cond), **x), plain)


def test_batch_with_a_negative_prompt(krea2):
    """Batch 2 with CFG at 88 x 120 px: the negative row is the plain model's, bit for bit; the positive row is
    the regional result of that row alone."""
    wrapper = wrapper_for(regional_cond([3, 5], background=True), beta=0.2)
    a, b = inputs(seed=1), inputs(seed=2)
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    mixed = run(krea2, wrapper, cond_or_uncond=(0, 1), **both)
    assert mixed.shape == (2, 16, 1, *LATENT)
    assert torch.equal(mixed[1:], run(krea2, cond_or_uncond=(1,), **b))
    torch.testing.assert_close(mixed[:1], run(krea2, wrapper, **a), atol=1e-5, rtol=0)


@pytest.mark.parametrize("blocks", [{0, 1}, {1}, {0}])
@pytest.mark.parametrize("masks", ["disjoint", "overlap", "soft"])
@pytest.mark.parametrize("refs", [None, "index"], ids=["image", "edit-refs"])
def test_matches_the_naive_reference(krea2, masks, blocks, refs):
    """The whole patched Krea 2 against the naive dense reference (masked in the chosen blocks, the unmasked
    regional stream in the others; the layerwise fusion plain, the text refiner block-diagonal per text) with a
    background region, for disjoint, overlapping and soft (feathered) masks, on the same concatenated context;
    also with a reference latent's tokens after the image's (base attention only)."""
    x = inputs(refs=refs)
    wrapper = wrapper_for(
        regional_cond([3, 5], background=True, overlap=masks == "overlap"),
        beta=0.3,
        single_blocks=frozenset(blocks),
        feather=48.0 if masks == "soft" else 0.0,
    )
    ours = run(krea2, wrapper, **x)
    plan = wrapper.plan(*LATENT, BASE_LEN, 25 if refs else 0)
    assert plan.dense == (masks != "disjoint") and plan.masks.soft == (masks == "soft")
    calls = []
    reference = reference_override(
        plan, 0.3, set(), blocks, calls, soft=masks == "soft", text_refiners=FUSION, per_token=FUSION
    )
    context = torch.cat([wrapper.region_texts(plan), x["context"]], dim=1)
    expected = run(krea2, override=reference, **{**x, "context": context})
    assert calls == list(range(DEPTH))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def fused_texts(model, wrapper=None, **x):
    """The text tokens the joint blocks receive (after txtfusion and txtmlp), read through ComfyUI's own
    post_input patch point."""
    seen = []

    def record(args):
        seen.append(args["txt"].clone())
        return args

    run(model, wrapper, **{**x, "extra": {"patches": {"post_input": [record]}}})
    return seen[0]


def test_a_region_text_is_fused_alone(krea2):
    """Each region text (and the base text) reaches the joint blocks as that prompt fused alone, the whole model
    run on it as its only context; so the order of the region texts does not matter."""
    x = inputs()
    forward, backward = regional_cond([4, 6], seed=3), regional_cond([4, 6], seed=3, order=[1, 0])
    wrapper = wrapper_for(forward)
    fused = fused_texts(krea2, wrapper, **x)
    alone = [fused_texts(krea2, **{**x, "context": e}) for e in (*forward.embeds, x["context"])]
    torch.testing.assert_close(fused, torch.cat(alone, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(run(krea2, wrapper, **x), run(krea2, wrapper_for(backward), **x), atol=1e-5, rtol=0)
    # without the separation (the concatenated context fused as one text), the region texts would mix
    mixed = fused_texts(krea2, **{**x, "context": torch.cat([*forward.embeds, x["context"]], 1)})
    assert (mixed - fused).abs().max() > 1e-3


def test_the_model_is_untouched(krea2):
    x = inputs()
    assert_untouched(krea2, lambda: run(krea2, **x), lambda: run(krea2, wrapper_for(regional_cond([3, 5])), **x))
