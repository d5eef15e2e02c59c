"""Regional prompting on FLUX.2 (ComfyUI's Flux class with global modulation, four RoPE axes, patch size 1 over a
128-channel latent, no pooled vector): the family checks on ComfyUI's own class at small width with seeded random
weights, at model level (the patch node's wrapper, called through the model's DIFFUSION_MODEL wrapper chain).

Text: FLUX.2's encoder is a 24B LLM (Mistral 3 Small; klein: Qwen3), far too large to write with random weights,
so the conditioning is random tensors of the model's (small) width. The base prompt arrives as Flux2.extra_conds
hands it to the model: its real tokens left-padded with zeros to 512. Text token j of the context sits at RoPE
position j, so every region text (real tokens only) is placed where its real tokens sit when that prompt alone is
padded to 512, i.e. at 512 - n + j (attention_patches/text_positions.py); the reference computes those positions
from scratch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from regional_layout.attention_patches.families import FLUX2
from support import family_checks
from support.regional_reference import random_regional_cond, reference_override

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

HEIGHT, WIDTH = 120, 200  # pixels, not multiples of 16: EmptyFlux2LatentImage gives a 7 x 12 latent (16 px each)
LATENT = (HEIGHT // 16, WIDTH // 16)  # patch size 1: one token per latent pixel, token grid 7 x 12
CTX = 64
PAD = 512  # Flux2.extra_conds left-pads every prompt to 512 tokens
BASE_REAL = 7  # the base prompt's real tokens (after its padding)
DEPTH = 2  # double and single blocks each
REF = (5, 6)  # a reference latent of another size (FLUX.2 editing): 30 tokens after the image's


@pytest.fixture(scope="module")
def flux2():
    from rl_devkit.tiny_models import small_flux2

    return small_flux2(depth=DEPTH, depth_single_blocks=DEPTH, seed=7)


def left_padded(real: torch.Tensor) -> torch.Tensor:
    """A prompt as Flux2.extra_conds hands it to the model: zeros before its real tokens, 512 in all."""
    return torch.nn.functional.pad(real, (0, 0, PAD - real.shape[1], 0))


def regional_cond(lengths, **kwargs):
    return random_regional_cond(WIDTH, HEIGHT, CTX, lengths, **kwargs)


def wrapper_for(cond, family=FLUX2, **options):
    return family_checks.regional_wrapper(cond, family, DEPTH, **options)


def inputs(batch=1, seed=0, refs=False):
    gen = torch.Generator().manual_seed(seed)
    x = dict(
        x=torch.randn(batch, 128, *LATENT, generator=gen),
        timestep=torch.full((batch,), 0.7),
        context=left_padded(torch.randn(batch, BASE_REAL, CTX, generator=gen)),
        guidance=torch.full((batch,), 3.5),
    )
    if refs:
        x["ref_latents"] = [torch.randn(batch, 128, *REF, generator=gen)]
    return x


def run(model, wrapper=None, cond_or_uncond=(0,), override=None, patches_replace=None, **x):
    opts = family_checks.step_options(wrapper, cond_or_uncond, override, patches_replace)
    with torch.no_grad():
        return model(
            x["x"], x["timestep"], x["context"], None, x["guidance"], x.get("ref_latents"), transformer_options=opts
        )


def region_pixels(wrapper, index):
    """The latent pixels of region `index`'s tokens (patch size 1: one token per latent pixel)."""
    return family_checks.region_pixels(wrapper, index, LATENT, PAD, patch=1)


def own_positions_from_scratch(model, x, text_lens, base_len, ref_latents=None):
    """patches_replace entries that hand every block a RoPE table computed from scratch (not gathered): each region
    text of n tokens at 512 - n + j on the text axis (where its real tokens sit when that prompt alone is padded to
    512), the base text at 0..base_len - 1, then the model's own image and reference-latent ids (method "index":
    reference i at time index 10 * i)."""
    _, img_ids = model.process_img(x)
    for i, ref in enumerate(ref_latents or []):
        index = model.params.ref_index_scale * (i + 1)
        img_ids = torch.cat([img_ids, model.process_img(ref, index=index)[1]], dim=1)
    positions = torch.cat([torch.arange(PAD - n, PAD) for n in text_lens] + [torch.arange(base_len)])
    txt_ids = torch.zeros(x.shape[0], len(positions), 4)
    txt_ids[:, :, 3] = positions
    pe = model.pe_embedder(torch.cat([txt_ids, img_ids], dim=1))
    patch = lambda args, extra: extra["original_block"]({**args, "pe": pe})  # noqa: E731
    kinds = [("double_block", len(model.double_blocks)), ("single_block", len(model.single_blocks))]
    return {"dit": {(kind, i): patch for kind, count in kinds for i in range(count)}}


@pytest.mark.pure
def test_region_texts_take_the_rows_of_their_padded_positions():
    """Rows of the model's RoPE table: each region text where it sits alone after its left padding (512 - n + j),
    the base text (padded already) and the image keep theirs; a base text that was not padded (shorter than 512)
    means no padding for the region texts either; a text longer than 512 is not padded."""
    from regional_layout.attention_patches.text_positions import own_text_position_rows

    rows = own_text_position_rows((3, 5), PAD, 3 + 5 + PAD + 4, PAD)
    expected = [509, 510, 511, 507, 508, 509, 510, 511, *range(PAD), *range(3 + 5 + PAD, 3 + 5 + PAD + 4)]
    assert rows.tolist() == expected
    assert own_text_position_rows((3,), 7, 3 + 7 + 2, PAD).tolist() == [0, 1, 2, *range(7), 10, 11]
    assert own_text_position_rows((600,), PAD, 1112, PAD)[:600].tolist() == list(range(600))


def test_the_family_reads_this_hosts_forward(flux2):
    assert FLUX2.forward_names(flux2) == FLUX2.forward_args
    assert FLUX2.blocks(flux2) == (DEPTH, DEPTH)


@pytest.mark.parametrize("changed", [0, 1])
@pytest.mark.parametrize("refs", [False, True], ids=["image", "edit-refs"])
def test_region_isolation(flux2, changed, refs):
    """beta = 0, every block, every step: changing one region's prompt leaves the other region's output latent
    bit-identical and changes its own (also with a reference latent's tokens after the image)."""
    x = inputs(refs=refs)
    lengths = [4, 6]
    first = regional_cond(lengths, seed=1)
    second = family_checks.with_region_embedding(first, regional_cond(lengths, seed=2), changed)
    a, b = run(flux2, wrapper_for(first), **x), run(flux2, wrapper_for(second), **x)
    kept, own = region_pixels(wrapper_for(first), 1 - changed), region_pixels(wrapper_for(first), changed)
    assert kept.any() and own.any()
    assert torch.equal(a[..., kept], b[..., kept])
    assert not torch.equal(a[..., own], b[..., own])


def test_each_region_text_sits_at_its_padded_positions(flux2):
    """The order of the region texts does not matter: every text sits at the positions it has alone. With the
    positions the concatenation would give, the order changes the picture; with every text at the first positions
    instead of after its left padding, the order does not matter but the picture changes (RoPE sees the text's
    distance to the image, which sits at text position 0)."""
    x = inputs()
    forward, backward = regional_cond([4, 6], seed=3), regional_cond([4, 6], seed=3, order=[1, 0])
    a, b = run(flux2, wrapper_for(forward), **x), run(flux2, wrapper_for(backward), **x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    concatenated = dataclasses.replace(FLUX2, text_positions="shared")
    c, d = run(flux2, wrapper_for(forward, concatenated), **x), run(flux2, wrapper_for(backward, concatenated), **x)
    assert (c - d).abs().max() > 1e-3
    unpadded = dataclasses.replace(FLUX2, text_pad_left_to=0)
    e, f = run(flux2, wrapper_for(forward, unpadded), **x), run(flux2, wrapper_for(backward, unpadded), **x)
    torch.testing.assert_close(e, f, atol=1e-5, rtol=0)
    assert (e - a).abs().max() > 1e-3


@pytest.mark.parametrize("options", [dict(beta=1.0), dict(control_steps=0)], ids=["beta-1", "zero-steps"])
def test_bit_identical_when_the_method_is_off(flux2, options):
    x = inputs()
    cond = regional_cond([3, 5], background=True)
    plain = run(flux2, **x)
    assert torch.equal(run(flux2, wrapper_for(cond, **options), **x), plain)
    assert not torch.equal(run(flux2, wrapper_for(cond), **x), plain)


@pytest.mark.parametrize("refs", [False, True], ids=["image", "edit-refs"])
def test_batch_with_a_negative_prompt(flux2, refs):
    """Batch 2 with CFG at a non-square size that is not a multiple of 16 px: the negative row is the plain
    model's, bit for bit; the positive row is the regional result of that row alone (reference latents split with
    the rows)."""
    wrapper = wrapper_for(regional_cond([3, 5], background=True), beta=0.2)
    a, b = inputs(seed=1, refs=refs), inputs(seed=2, refs=refs)
    both = {k: torch.cat([a[k], b[k]]) for k in a if k != "ref_latents"}
    if refs:
        both["ref_latents"] = [torch.cat([a["ref_latents"][0], b["ref_latents"][0]])]
    mixed = run(flux2, wrapper, cond_or_uncond=(0, 1), **both)
    assert mixed.shape == (2, 128, *LATENT)
    assert torch.equal(mixed[1:], run(flux2, cond_or_uncond=(1,), **b))
    torch.testing.assert_close(mixed[:1], run(flux2, wrapper, **a), atol=1e-5, rtol=0)


@pytest.mark.parametrize("double,single", [({0, 1}, {0, 1}), ({0}, {1}), (set(), {0, 1})])
@pytest.mark.parametrize("masks", ["disjoint", "overlap", "soft"])
@pytest.mark.parametrize("refs", [False, True], ids=["image", "edit-refs"])
def test_matches_the_naive_reference(flux2, double, single, masks, refs):
    """The whole patched FLUX.2 against the naive dense reference (masked in the chosen blocks, the unmasked
    regional stream in the others) with a background region; overlapping masks, and soft ones (a feather), take
    the dense path; every text at its own positions computed from scratch; with a reference latent's tokens after
    the image (base attention only)."""
    x = inputs(refs=refs)
    wrapper = wrapper_for(
        regional_cond([3, 5], background=True, overlap=masks == "overlap"),
        beta=0.3,
        double_blocks=frozenset(double),
        single_blocks=frozenset(single),
        feather=48.0 if masks == "soft" else 0.0,
    )
    ours = run(flux2, wrapper, **x)
    n_ref = REF[0] * REF[1] if refs else 0
    plan = wrapper.plan(*LATENT, PAD, n_ref)
    assert plan.dense == (masks != "disjoint") and plan.masks.soft == (masks == "soft")
    assert plan.length == sum(plan.text_lens) + PAD + LATENT[0] * LATENT[1] + n_ref
    calls = []
    reference = reference_override(plan, 0.3, double, single, calls, soft=masks == "soft")
    context = torch.cat([wrapper.region_texts(plan), x["context"]], dim=1)
    positions = own_positions_from_scratch(flux2, x["x"], plan.text_lens, PAD, x.get("ref_latents"))
    expected = run(flux2, override=reference, patches_replace=positions, **{**x, "context": context})
    assert calls == [0, 1, 0, 1]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_the_model_is_untouched(flux2):
    """A regional call changes no weight, and the plain model gives the same result before and after it."""
    x = inputs()
    regional = wrapper_for(regional_cond([3, 5], background=True))
    family_checks.assert_untouched(flux2, lambda: run(flux2, **x), lambda: run(flux2, regional, **x))


def test_a_latent_of_another_family_is_refused(flux2):
    """A FLUX.1-style 16-channel latent names the FLUX.2 latent node."""
    x = inputs()
    x["x"] = torch.randn(1, 16, *LATENT)
    with pytest.raises(ValueError, match="128-channel latent .use EmptyFlux2LatentImage"):
        run(flux2, wrapper_for(regional_cond([3, 5])), **x)


def test_the_patch_node_detects_flux2(flux2):
    """The node tells FLUX.2 from FLUX.1 (both ComfyUI's Flux class: four RoPE axes), reads both block lists and
    refuses embeddings of another width, naming the input."""
    import comfy.model_patcher
    from regional_layout.attention_patches.families import FLUX1
    from regional_layout.attention_patches.flux_patch import PATCH_KEY
    from regional_layout.nodes.regional_flux_patch import RegionalFluxPatch, model_family
    from rl_devkit.tiny_models import small_flux

    def patcher(diffusion_model):
        holder = torch.nn.Module()
        holder.diffusion_model = diffusion_model
        return comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu"))

    model = patcher(flux2)
    assert model_family(model) == (FLUX2, flux2)
    assert model_family(patcher(small_flux(depth=1, depth_single_blocks=1)))[0] is FLUX1
    cond = regional_cond([3, 5])
    node_inputs = dict(
        model=model,
        regional_cond=cond,
        base_ratio=0.0,
        control_steps=2,
        double_blocks="1",
        single_blocks="0",
        feather=0.0,
    )
    patched = RegionalFluxPatch.execute(**node_inputs).result[0]
    (wrapper,) = patched.wrappers["diffusion_model"][PATCH_KEY]
    assert wrapper.family is FLUX2
    assert wrapper.options.double_blocks == {1} and wrapper.options.single_blocks == {0}
    assert not model.wrappers.get("diffusion_model")
    x = inputs()
    expected = wrapper_for(cond, double_blocks=frozenset({1}), single_blocks=frozenset({0}))
    torch.testing.assert_close(run(flux2, wrapper, **x), run(flux2, expected, **x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="single_blocks: '2' is outside the model's blocks 0-1"):
        RegionalFluxPatch.execute(**{**node_inputs, "single_blocks": "2"})
    narrow = type(cond)(cond.layout, tuple(e[..., :32] for e in cond.embeds), None)
    with pytest.raises(ValueError, match="regional_cond is 32 wide, the model expects 64.*type flux2"):
        RegionalFluxPatch.execute(**{**node_inputs, "regional_cond": narrow})
