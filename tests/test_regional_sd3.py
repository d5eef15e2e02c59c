"""Regional prompting on SD3 / SD3.5 (ComfyUI's MMDiT: joint blocks over [context | image], the last block's
context pre_only, SD3.5 Medium's image-only x_block_self_attn in the first blocks, no text positions): the family
checks on ComfyUI's own OpenAISignatureMMDITWrapper with seeded random weights inside ComfyUI's SD3 BaseModel, at
model level (the patch node's wrapper on the APPLY_MODEL wrapper point, called through BaseModel.apply_model, as
the sampler calls it). MMDiT names no block to its attention: the wrapper names them through patches_replace["dit"];
the reference counts them instead."""

from __future__ import annotations

import pytest
import torch

from regional_layout.attention_patches.families import SD3
from support.regional_reference import flat_counted_reference_override, random_regional_cond

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

HEIGHT, WIDTH = 88, 120  # pixels, not multiples of 16: latent 11 x 15 (odd, padded), token grid 6 x 8
CTX, POOLED = 64, 32
BASE_LEN = 7
DEPTH = 2
N_IMG = 6 * 8


@pytest.fixture(scope="module")
def sd3():
    from rl_devkit.tiny_models import small_sd3_model

    return small_sd3_model(depth=DEPTH, seed=6)


def regional_cond(lengths, **kwargs):
    return random_regional_cond(WIDTH, HEIGHT, CTX, lengths, **kwargs)


def wrapper_for(cond, **options):
    from regional_layout.attention_patches.flux_patch import RegionalFluxOptions, RegionalFluxWrapper

    defaults = dict(beta=0.0, control_steps=2, double_blocks=frozenset(range(DEPTH)))
    return RegionalFluxWrapper(cond, RegionalFluxOptions(**{**defaults, **options}), SD3)


def inputs(batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, HEIGHT // 8, WIDTH // 8, generator=gen),
        sigma=torch.full((batch,), 0.7),
        context=torch.randn(batch, BASE_LEN, CTX, generator=gen),
        y=torch.randn(batch, POOLED, generator=gen),
    )


def run(model, wrapper=None, cond_or_uncond=(0,), override=None, patches_replace=None, **x):
    from regional_layout.attention_patches.flux_patch import PATCH_KEY

    opts = {
        "cond_or_uncond": list(cond_or_uncond),
        "sigmas": torch.tensor([0.7]),
        "sample_sigmas": torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0]),
    }
    if wrapper is not None:
        opts["wrappers"] = {SD3.wraps: {PATCH_KEY: [wrapper]}}
    if override is not None:
        opts["optimized_attention_override"] = override
    if patches_replace is not None:
        opts["patches_replace"] = patches_replace
    with torch.no_grad():
        return model.apply_model(x["x"], x["sigma"], c_crossattn=x["context"], y=x["y"], transformer_options=opts)


def region_pixels(wrapper, index):
    """The latent pixels of region `index`'s tokens (2x2 latent pixels per token, cut to the odd latent)."""
    plan = wrapper.plan(HEIGHT // 8, WIDTH // 8, BASE_LEN)
    rows, cols = plan.masks.grid
    inside = plan.masks.hard[index].view(rows, cols).repeat_interleave(2, 0).repeat_interleave(2, 1)
    return inside[: HEIGHT // 8, : WIDTH // 8]


def test_the_tiny_model_is_sd35_medium_like(sd3):
    """Joint blocks with an image-only second attention in block 0 and a pre_only context in the last block; the
    family finds the blocks and reads the wrapped BaseModel's diffusion model."""
    dm = sd3.diffusion_model
    assert [b.x_block.x_block_self_attn for b in dm.joint_blocks] == [True, False]
    assert [b.context_block.pre_only for b in dm.joint_blocks] == [False, True]
    assert SD3.diffusion_model(sd3) is dm and SD3.blocks(dm) == (DEPTH,)


@pytest.mark.parametrize("changed", [0, 1])
def test_region_isolation(sd3, changed):
    """beta = 0, every block, every step: changing one region's prompt leaves the other region's output latent
    bit-identical and changes its own."""
    x = inputs()
    lengths = [4, 6]
    first, second = regional_cond(lengths, seed=1), regional_cond(lengths, seed=1)
    other = regional_cond(lengths, seed=2)
    embeds = list(second.embeds)
    embeds[changed] = other.embeds[changed]
    second = type(second)(second.layout, tuple(embeds), second.background)
    a, b = run(sd3, wrapper_for(first), **x), run(sd3, wrapper_for(second), **x)
    kept, own = region_pixels(wrapper_for(first), 1 - changed), region_pixels(wrapper_for(first), changed)
    assert torch.equal(a[..., kept], b[..., kept])
    assert not torch.equal(a[..., own], b[..., own])


def test_a_single_region_over_everything_is_that_prompt_alone(sd3):
    """beta = 0, one region covering the whole picture: the image sees only that region's text (its whole padded
    conditioning, as the encode node keeps it for SD3), so the result is the plain model prompted with it."""
    from regional_layout.attention_patches.regional_cond import RegionalConditioning
    from regional_layout.layout.regions import Region, RegionLayout

    x = inputs()
    text = torch.randn(1, 9, CTX, generator=torch.Generator().manual_seed(4))
    cond = RegionalConditioning(
        RegionLayout(WIDTH, HEIGHT, (Region("all", torch.ones(HEIGHT, WIDTH)),), "base", ""), (text,), None
    )
    torch.testing.assert_close(run(sd3, wrapper_for(cond), **x), run(sd3, **{**x, "context": text}), atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", [dict(beta=1.0), dict(control_steps=0)], ids=["beta-1", "zero-steps"])
def test_bit_identical_when_the_method_is_off(sd3, options):
    x = inputs()
    cond = regional_cond([3, 5], background=True)
    plain = run(sd3, **x)
    assert torch.equal(run(sd3, wrapper_for(cond, **options), **x), plain)
    assert not torch.equal(run(sd3, wrapper_for(cond), **x), plain)


def test_batch_with_a_negative_prompt(sd3):
    """Batch 2 with CFG: the negative row is the plain model's, bit for bit; the positive row is the regional
    result of that row alone (the pooled vector y splits with the rows)."""
    wrapper = wrapper_for(regional_cond([3, 5], background=True), beta=0.2)
    a, b = inputs(seed=1), inputs(seed=2)
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    mixed = run(sd3, wrapper, cond_or_uncond=(0, 1), **both)
    assert mixed.shape == (2, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(mixed[1:], run(sd3, cond_or_uncond=(1,), **b))
    torch.testing.assert_close(mixed[:1], run(sd3, wrapper, **a), atol=1e-5, rtol=0)


@pytest.mark.parametrize("blocks", [{0, 1}, {1}, {0}])
@pytest.mark.parametrize("layout", ["disjoint", "overlap", "soft"])
def test_matches_the_naive_reference(sd3, blocks, layout):
    """The whole patched SD3 against the naive dense reference (masked in the chosen blocks, the unmasked regional
    stream in the others; SD3.5's image-only attention plain) with a background region, with overlapping and
    soft (feathered) masks, and mixed block selections."""
    x = inputs()
    cond = regional_cond([3, 5], background=True, overlap=layout == "overlap")
    feather = 24.0 if layout == "soft" else 0.0
    wrapper = wrapper_for(cond, beta=0.3, double_blocks=frozenset(blocks), feather=feather)
    ours = run(sd3, wrapper, **x)
    plan = wrapper.plan(HEIGHT // 8, WIDTH // 8, BASE_LEN)
    assert plan.dense == (layout != "disjoint") and plan.masks.soft == (layout == "soft")
    assert plan.length == sum(plan.text_lens) + BASE_LEN + N_IMG
    calls = []
    reference = flat_counted_reference_override(plan, 0.3, blocks, calls, soft=layout == "soft")
    context = torch.cat([wrapper.region_texts(plan), x["context"]], dim=1)
    expected = run(sd3, override=reference, **{**x, "context": context})
    assert calls == list(range(DEPTH))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_the_image_only_attention_stays_plain(sd3):
    """SD3.5's x_block_self_attn (block 0 here) is not joint: the override hands it, unchanged, to the attention
    that was there (an override already present) and counts it as plain; the joint calls carry the block that
    with_block_names' patches_replace entries name. The override runs as the wrapper sets it up."""
    from regional_layout.attention_patches.flux_patch import regional_override, with_block_names

    seen = []

    def previous(func, q, k, v, heads, **kwargs):
        opts = kwargs.get("transformer_options") or {}
        seen.append((tuple(q.shape), opts.get("block_type"), opts.get("block_index")))
        return func(q, k, v, heads, **kwargs)

    x = inputs()
    wrapper = wrapper_for(regional_cond([3, 5]))
    plan = wrapper.plan(HEIGHT // 8, WIDTH // 8, BASE_LEN)
    override = regional_override(plan, wrapper.options, previous, [], DEPTH, family=SD3)
    context = torch.cat([wrapper.region_texts(plan), x["context"]], dim=1)
    names = with_block_names(None, SD3.block_kinds, SD3.blocks(sd3.diffusion_model))
    ours = run(sd3, override=override, patches_replace=names, **{**x, "context": context})
    assert seen == [((1, N_IMG, 64 * DEPTH), "double", 0)]
    assert override.plain == 1 and override.calls == [("double", 0), ("double", 1)] and not override.counted
    torch.testing.assert_close(ours, run(sd3, wrapper, **x), atol=0, rtol=0)


def test_a_block_replacement_already_there_is_chained(sd3):
    """Another pack's patches_replace['dit'] entry keeps running inside the wrapper's, with the joint sequence."""
    x = inputs()
    seen = []

    def other(args, extra):
        seen.append((args["txt"].shape[1], args["transformer_options"].get("block_index")))
        return extra["original_block"](args)

    wrapper = wrapper_for(regional_cond([3, 5]))
    patched = run(sd3, wrapper, patches_replace={"dit": {("double_block", 1): other}}, **x)
    assert seen == [(3 + 5 + BASE_LEN, 1)]
    torch.testing.assert_close(patched, run(sd3, wrapper, **x), atol=0, rtol=0)


def test_the_model_is_untouched(sd3):
    """A regional call changes no weight, and the plain model gives the same result before and after it."""
    x = inputs()
    weights = {k: v.clone() for k, v in sd3.state_dict().items()}
    plain = run(sd3, **x)
    run(sd3, wrapper_for(regional_cond([3, 5], background=True)), **x)
    assert torch.equal(run(sd3, **x), plain)
    assert all(torch.equal(v, weights[k]) for k, v in sd3.state_dict().items())


def test_the_patch_node_detects_sd3(sd3):
    """The node finds the family from ComfyUI's model class, puts the wrapper on apply_model, reads the blocks from
    `joint_blocks`, refuses single-stream block lists (SD3 has none) and embeddings of another width."""
    import comfy.model_patcher
    from regional_layout.attention_patches.flux_patch import PATCH_KEY
    from regional_layout.nodes.regional_flux_patch import RegionalFluxPatch, model_family

    model = comfy.model_patcher.ModelPatcher(sd3, torch.device("cpu"), torch.device("cpu"))
    assert model_family(model) == (SD3, sd3.diffusion_model)
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
    (wrapper,) = patched.wrappers["apply_model"][PATCH_KEY]
    assert wrapper.family is SD3 and not patched.wrappers.get("diffusion_model")
    assert wrapper.options.double_blocks == {1} and not wrapper.options.single_blocks
    assert not model.wrappers.get("apply_model")
    x = inputs()
    torch.testing.assert_close(
        run(sd3, wrapper, **x), run(sd3, wrapper_for(cond, double_blocks=frozenset({1})), **x), atol=0, rtol=0
    )
    with pytest.raises(ValueError, match="single_blocks: SD3 / SD3.5 has no single-stream blocks"):
        RegionalFluxPatch.execute(**{**node_inputs, "single_blocks": "0"})
    narrow = type(cond)(cond.layout, tuple(e[..., :32] for e in cond.embeds), None)
    with pytest.raises(ValueError, match="regional_cond is 32 wide, the model expects 64"):
        RegionalFluxPatch.execute(**{**node_inputs, "regional_cond": narrow})


def test_sd3_region_texts_keep_their_padding():
    """The encode node tells SD3's CLIP (CLIP-L, CLIP-G and T5 sections) by its tokens and keeps the whole padded
    conditioning for it; FLUX's (CLIP-L and T5) keeps the real tokens."""
    from comfy.text_encoders.flux import FluxTokenizer
    from comfy.text_encoders.sd3_clip import SD3Tokenizer
    from regional_layout.attention_patches.regional_cond import keeps_padding

    assert keeps_padding(SD3Tokenizer().tokenize_with_weights("a red fox"))
    assert not keeps_padding(FluxTokenizer().tokenize_with_weights("a red fox"))


def test_a_region_text_is_its_prompt_alone_padding_included(tiny_models):
    """Through ComfyUI's own SD3 CLIP object (CLIPLoader type sd3 with the tiny CLIP-L; CLIP-G and T5 absent, as
    ComfyUI allows): each region's embedding is bit for bit what that prompt alone gets for the sampler, its
    77-token padding included, whatever the neighbours (a long neighbour takes two chunks)."""
    import comfy.sd
    from regional_layout.attention_patches.regional_cond import encode_texts

    clip = comfy.sd.load_clip(
        ckpt_paths=[str(tiny_models / "text_encoders" / "clip_l.safetensors")], clip_type=comfy.sd.CLIPType.SD3
    )
    prompt, neighbour = "a red fox sitting in fresh snow", " ".join(["an old stone lighthouse by the sea"] * 12)
    alone = clip.encode_from_tokens(clip.tokenize(prompt))  # what CLIPTextEncode gives SD3
    with_short = encode_texts(clip, [prompt, "a blue bird"])
    with_long = encode_texts(clip, [prompt, neighbour])
    assert alone.shape == (1, 77, 4096)
    assert torch.equal(with_short[0], alone) and torch.equal(with_long[0], alone)
    assert with_long[1].shape == (1, 154, 4096)
    assert not torch.equal(with_short[1], alone)
