"""Regional FLUX attention: the pack's grouped and dense paths against a deliberately naive reference, and the
patched tiny FLUX model against the unpatched one (bit-identical where the method must change nothing)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

from regional_layout.attention_patches.regional_attention import (
    SequencePlan,
    regional_attention,
    unselected_block_attention,
)
from regional_layout.attention_patches.token_masks import region_token_masks
from support.regional_reference import hide_block_info, layouts, naive_reference, rect, reference_override

pytestmark = pytest.mark.family  # model-level family checks: CI runs them on both hosts

torch.set_num_threads(1)


@pytest.mark.pure
@pytest.mark.parametrize("regions", [1, 2, 3, 4])
@pytest.mark.parametrize("overlap", [False, True], ids=["disjoint", "overlap"])
@pytest.mark.parametrize("background", [False, True], ids=["no-bg", "bg"])
def test_matches_naive_reference(regions, overlap, background):
    height, width = 88, 120  # pixels: latent 11 x 15, token grid 6 x 8 (odd latent: padded like FLUX)
    masks = torch.stack(layouts(height, width)[overlap][:regions])
    tm = region_token_masks(masks, height // 8, width // 8, background=background)
    assert tm.grid == (6, 8)
    assert tm.disjoint == (not overlap or regions == 1)
    gen = torch.Generator().manual_seed(regions)
    text_lens = tuple(int(n) for n in torch.randint(1, 6, (tm.hard.shape[0],), generator=gen))
    t0, extra = 7, 3  # extra: image tokens after the grid (reference latents), base attention only
    L = t0 + sum(text_lens) + tm.hard.shape[1] + extra
    q, k, v = (torch.randn(2, 3, L, 16, generator=gen) for _ in range(3))
    plan = SequencePlan(t0, text_lens, tm, n_extra=extra)
    for beta in (0.0, 0.2, 1.0):
        ours = regional_attention(q, k, v, plan, beta)
        ref = naive_reference(q, k, v, t0, text_lens, tm.hard, beta)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    if not overlap:  # the exact dense path agrees too
        for beta in (0.0, 0.2):
            dense = regional_attention(q, k, v, SequencePlan(t0, text_lens, tm, extra, force_dense=True), beta)
            torch.testing.assert_close(dense, naive_reference(q, k, v, t0, text_lens, tm.hard, beta), atol=1e-5, rtol=0)
    # a block outside the chosen set: the official rule (the regional stream unmasked, still blended by beta),
    # its base attention through the model's back end (here SDPA in the [B, L, H·D] layout ComfyUI returns)
    plain = lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_).transpose(1, 2).flatten(2)  # noqa: E731
    for beta in (0.0, 0.2, 1.0):
        torch.testing.assert_close(
            unselected_block_attention(q, k, v, plan, beta, plain),
            naive_reference(q, k, v, t0, text_lens, tm.hard, beta, masked=False),
            atol=1e-5,
            rtol=0,
        )


# ---------------------------------------------------------------------------------------------------------
# The patched tiny FLUX model (ComfyUI's own Flux class, called through its DIFFUSION_MODEL wrapper chain)

HEIGHT, WIDTH = 88, 120  # pixels; latent 11 x 15 (odd: FLUX pads it), token grid 6 x 8
CTX = 64  # small_flux context width


@pytest.fixture(scope="module")
def flux(comfyui):
    from rl_devkit.tiny_models import small_flux

    return small_flux(depth=2, depth_single_blocks=2, seed=3)


def regional_cond(embeds, *, background=False, masks=None, seed=0):
    from regional_layout.attention_patches.regional_cond import RegionalConditioning
    from regional_layout.layout.regions import Region, RegionLayout

    masks = masks if masks is not None else layouts(HEIGHT, WIDTH)[0][: len(embeds)]
    regions = tuple(Region(f"region {i}", m) for i, m in enumerate(masks))
    gen = torch.Generator().manual_seed(seed + 100)
    bg = torch.randn(1, 3, CTX, generator=gen) if background else None
    return RegionalConditioning(
        RegionLayout(WIDTH, HEIGHT, regions, "base", "bg" if background else ""), tuple(embeds), bg
    )


def embeds(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, n, CTX, generator=gen) for n in lengths]


def inputs(batch=1, seed=0, base_len=7):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, HEIGHT // 8, WIDTH // 8, generator=gen),
        timestep=torch.full((batch,), 0.7),
        context=torch.randn(batch, base_len, CTX, generator=gen),
        y=torch.randn(batch, 32, generator=gen),
        guidance=torch.full((batch,), 3.5),
    )


def run(flux, wrapper=None, cond_or_uncond=(0,), sigma=0.7, override=None, patches_replace=None, **kw):
    from regional_layout.attention_patches.flux_patch import PATCH_KEY

    opts = {
        "cond_or_uncond": list(cond_or_uncond),
        "sigmas": torch.tensor([sigma]),
        "sample_sigmas": torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0]),
    }
    if wrapper is not None:
        opts["wrappers"] = {"diffusion_model": {PATCH_KEY: [wrapper]}}
    if override is not None:
        opts["optimized_attention_override"] = override
    if patches_replace is not None:
        opts["patches_replace"] = patches_replace
    with torch.no_grad():
        return flux(kw["x"], kw["timestep"], kw["context"], kw["y"], kw["guidance"], transformer_options=opts)


def wrapper_for(cond, **options):
    from regional_layout.attention_patches.flux_patch import RegionalFluxOptions, RegionalFluxWrapper

    defaults = dict(beta=0.2, control_steps=2, double_blocks=frozenset({0, 1}), single_blocks=frozenset({0, 1}))
    return RegionalFluxWrapper(cond, RegionalFluxOptions(**{**defaults, **options}))


@pytest.mark.parametrize(
    "options",
    [dict(beta=1.0), dict(control_steps=0), dict(double_blocks=frozenset(), single_blocks=frozenset())],
    ids=["beta-1", "zero-steps", "no-blocks"],
)
def test_bit_identical_when_the_method_is_off(flux, options):
    """Test 1 (model level; the server test repeats it through the sampler)."""
    x = inputs()
    plain = run(flux, **x)
    cond = regional_cond(embeds([3, 5]), background=True)
    assert torch.equal(run(flux, wrapper_for(cond, **options), **x), plain)
    assert not torch.equal(run(flux, wrapper_for(cond), **x), plain)  # the same wrapper switched on does change it


def test_plain_after_the_control_steps(flux):
    """control_steps=2 of the schedule [1.0, 0.7, 0.4, 0.1, 0]: sigma 0.4 starts step 2, which is plain."""
    x = inputs()
    wrapper = wrapper_for(regional_cond(embeds([3, 5])))
    assert torch.equal(run(flux, wrapper, sigma=0.4, **x), run(flux, sigma=0.4, **x))
    assert not torch.equal(run(flux, wrapper, sigma=0.55, **x), run(flux, sigma=0.55, **x))  # inside step 1


def test_negative_rows_are_plain_and_batch_rows_independent(flux):
    """Test 5 (model level): in a [positive, negative] batch the negative row equals the plain model's
    negative pass bit for bit; batch 2 of positives equals two batch-1 runs."""
    wrapper = wrapper_for(regional_cond(embeds([3, 5]), background=True))
    a, b = inputs(seed=1), inputs(seed=2)
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    mixed = run(flux, wrapper, cond_or_uncond=(0, 1), **both)
    assert torch.equal(mixed[1:], run(flux, cond_or_uncond=(1,), **b))
    torch.testing.assert_close(mixed[:1], run(flux, wrapper, **a), atol=1e-5, rtol=0)
    pair = run(flux, wrapper, cond_or_uncond=(0,), **both)
    torch.testing.assert_close(pair[:1], run(flux, wrapper, **a), atol=1e-5, rtol=0)
    torch.testing.assert_close(pair[1:], run(flux, wrapper, **b), atol=1e-5, rtol=0)


def capture_blocks(store):
    """patches_replace['dit'] entries that record every block's output (ComfyUI's block-replace patch point)."""

    def make(kind):
        def patch(args, extra):
            out = extra["original_block"](args)
            store.append({k: v.clone() for k, v in out.items()})
            return out

        return patch

    return {"dit": {(f"{kind}_block", i): make(kind) for kind in ("double", "single") for i in range(2)}}


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "grouped"])
def test_region_isolation(flux, dense):
    """Test 3: with beta = 0 in masked blocks, changing region 2's prompt changes neither region 1's image tokens
    nor region 1's prompt tokens, in any block's hidden states or in the output."""
    x = inputs()
    first = embeds([4, 6], seed=5)
    second = [first[0], embeds([6], seed=9)[0]]
    states, outputs = [], []
    for region_embeds in (first, second):
        store = []
        wrapper = wrapper_for(regional_cond(region_embeds), beta=0.0, force_dense=dense)
        outputs.append(run(flux, wrapper, patches_replace=capture_blocks(store), **x))
        states.append(store)
    plan = wrapper.plan(HEIGHT // 8, WIDTH // 8, 7)
    (s1, n1), (s2, n2) = plan.text_spans()
    img1 = torch.nonzero(plan.masks.hard[0]).flatten()
    n_txt = plan.img_start
    for a, b in zip(*states):
        if "txt" in a:  # double block: separate streams
            assert torch.equal(a["txt"][:, s1 : s1 + n1], b["txt"][:, s1 : s1 + n1])
            assert torch.equal(a["img"][:, img1], b["img"][:, img1])
            assert not torch.equal(a["txt"][:, s2 : s2 + n2], b["txt"][:, s2 : s2 + n2])
        else:  # single block: one joint sequence
            assert torch.equal(a["img"][:, s1 : s1 + n1], b["img"][:, s1 : s1 + n1])
            assert torch.equal(a["img"][:, n_txt + img1], b["img"][:, n_txt + img1])
    rows, cols = plan.masks.grid
    inside = plan.masks.hard[0].view(rows, cols).repeat_interleave(2, 0).repeat_interleave(2, 1)
    inside = inside[: HEIGHT // 8, : WIDTH // 8]
    assert torch.equal(outputs[0][..., inside], outputs[1][..., inside])
    assert not torch.equal(outputs[0][..., ~inside], outputs[1][..., ~inside])


@pytest.mark.pure
def test_thirty_two_regions_match_the_reference():
    """At least 32 regions: a 4 x 8 grid of masks on a 128 x 256 px picture (8 x 16 tokens)."""
    height, width = 128, 256
    masks = torch.stack(
        [rect(height, width, r * 16, (r + 1) * 16, c * 32, (c + 1) * 32) for r in range(4) for c in range(8)]
    )
    tm = region_token_masks(masks, height // 8, width // 8, background=True)
    assert tm.hard.shape[0] == 33 and tm.disjoint  # the background takes the lower half
    gen = torch.Generator().manual_seed(32)
    text_lens = tuple(int(n) for n in torch.randint(1, 4, (33,), generator=gen))
    L = 5 + sum(text_lens) + tm.hard.shape[1]
    q, k, v = (torch.randn(1, 2, L, 8, generator=gen) for _ in range(3))
    ours = regional_attention(q, k, v, SequencePlan(5, text_lens, tm), 0.2)
    torch.testing.assert_close(ours, naive_reference(q, k, v, 5, text_lens, tm.hard, 0.2), atol=1e-5, rtol=0)


@pytest.mark.pure
def test_soft_masks_use_the_weighted_rules():
    """Feathered masks: the dense path applies the soft rules (log-weights), checked against a loop version."""
    height, width = 88, 120
    masks = torch.stack(layouts(height, width)[0][:2])
    tm = region_token_masks(masks, height // 8, width // 8, feathers=[24.0, 0.0])
    assert tm.soft
    w = tm.weights
    assert ((w[0] > 0) & (w[0] < 1)).any() and set(w[1].unique().tolist()) <= {0.0, 1.0}
    text_lens, t0 = (2, 3), 4
    n_txt, n_img = 5, w.shape[1]
    owner = [0, 0, 1, 1, 1]
    weight = torch.zeros(n_txt + n_img, n_txt + n_img)
    u = w.max(0).values
    for a in range(n_txt + n_img):
        for b in range(n_txt + n_img):
            if a < n_txt and b < n_txt:
                weight[a, b] = float(owner[a] == owner[b])
            elif a < n_txt:
                weight[a, b] = w[owner[a], b - n_txt]
            elif b < n_txt:
                weight[a, b] = w[owner[b], a - n_txt]
            else:
                p, r = a - n_txt, b - n_txt
                shared = max(min(w[i, p], w[i, r]) for i in range(2))
                weight[a, b] = max(shared, min(1 - u[p], 1 - u[r]))
    gen = torch.Generator().manual_seed(0)
    L = n_txt + t0 + n_img  # [region texts | base text | image]
    q, k, v = (torch.randn(1, 2, L, 8, generator=gen) for _ in range(3))
    idx = torch.cat([torch.arange(n_txt), torch.arange(n_txt + t0, L)])
    regional = F.scaled_dot_product_attention(q[:, :, idx], k[:, :, idx], v[:, :, idx], attn_mask=torch.log(weight))
    ours = regional_attention(q, k, v, SequencePlan(t0, text_lens, tm), 0.0).view(1, L, 2, 8).transpose(1, 2)
    torch.testing.assert_close(ours[:, :, idx], regional, atol=1e-5, rtol=0)


@pytest.mark.pure
def test_block_lists_and_control_steps():
    from regional_layout.attention_patches.flux_patch import parse_blocks, step_is_controlled

    assert parse_blocks("all", 4) == {0, 1, 2, 3}
    assert parse_blocks("none", 4) == parse_blocks("", 4) == set()
    assert parse_blocks("every 2", 5) == {0, 2, 4}
    assert parse_blocks("every 3 from 1", 8) == {1, 4, 7}
    assert parse_blocks("0-2, 5", 8) == {0, 1, 2, 5}
    for bad in ("0-x", "9", "3-1", "every 0"):
        with pytest.raises(ValueError, match="blocks"):
            parse_blocks(bad, 8)
    schedule = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    opts = lambda sigma: {"sample_sigmas": schedule, "sigmas": torch.tensor([sigma])}  # noqa: E731
    assert step_is_controlled(opts(1.0), 2) and step_is_controlled(opts(0.6), 2)  # 0.6: a sub-step of step 1
    assert not step_is_controlled(opts(0.5), 2) and not step_is_controlled(opts(1.0), 0)
    assert step_is_controlled(opts(0.25), 4)


@pytest.mark.parametrize("backend", ["pytorch", "sub_quad", "split", "basic"])
def test_every_cpu_attention_back_end_and_a_chained_override(flux, backend):
    """An override already set (here: one that forces a ComfyUI back end) is kept: it runs the plain work of the
    unselected blocks; the masked blocks never depend on the back end, so no back end can drop the mask."""
    from comfy.ldm.modules import attention

    func = attention.attention_basic if backend == "basic" else attention.get_attention_function(backend)
    used = []

    def force_backend(_func, *args, **kwargs):
        used.append(1)
        return func(*args, **kwargs)

    x = inputs()
    cond = regional_cond(embeds([3, 5]), background=True)
    some_blocks = wrapper_for(cond, double_blocks=frozenset({0}), single_blocks=frozenset({1}))
    reference = run(flux, some_blocks, **x)
    chained = run(flux, some_blocks, override=force_backend, **x)
    assert used, "the chained override was dropped"
    torch.testing.assert_close(chained, reference, atol=1e-4, rtol=1e-4)
    all_blocks = wrapper_for(cond)
    assert torch.equal(run(flux, all_blocks, override=force_backend, **x), run(flux, all_blocks, **x))


@pytest.mark.parametrize(
    "double,single", [("every 2", "every 2"), ("0", "1"), ("none", "all"), ("all", "none"), ("1", "0,2")]
)
@pytest.mark.parametrize("beta", [0.0, 0.3])
@pytest.mark.parametrize("dense", [False, True], ids=["grouped", "dense"])
def test_mixed_block_selections_match_the_official_rule(flux3, double, single, beta, dense):
    """Blocks outside the selection still run the regional stream, unmasked and blended by beta (the official
    transformer_flux.py drops only the mask there): the whole patched model agrees with the naive reference."""
    from regional_layout.attention_patches.flux_patch import parse_blocks

    x = inputs()
    cond = regional_cond(embeds([3, 5]), background=True)
    chosen = dict(double_blocks=parse_blocks(double, 3), single_blocks=parse_blocks(single, 3))
    wrapper = wrapper_for(cond, beta=beta, force_dense=dense, **chosen)
    ours = run(flux3, wrapper, **x)
    plan = wrapper.plan(HEIGHT // 8, WIDTH // 8, x["context"].shape[1])
    calls = []
    reference = reference_override(plan, beta, chosen["double_blocks"], chosen["single_blocks"], calls)
    context = torch.cat([wrapper.region_texts(plan), x["context"]], dim=1)
    expected = run(flux3, override=reference, **{**x, "context": context})
    assert calls == [0, 1, 2, 0, 1, 2]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def flux3():
    from rl_devkit.tiny_models import small_flux

    return small_flux(depth=3, depth_single_blocks=3, seed=4)


@pytest.mark.parametrize("double,single", [("every 2", "1"), ("all", "none")])
def test_blocks_are_counted_when_the_host_does_not_name_them(flux3, double, single):
    """Without block_type / block_index in transformer_options, the regional result is bit-identical to the run
    with them; a patch that skips a block then makes the count wrong, which is an error, never a silent plain run."""
    from regional_layout.attention_patches.flux_patch import parse_blocks

    x = inputs()
    wrapper = wrapper_for(
        regional_cond(embeds([3, 5]), background=True),
        double_blocks=parse_blocks(double, 3),
        single_blocks=parse_blocks(single, 3),
    )
    named = run(flux3, wrapper, **x)
    assert torch.equal(run(flux3, wrapper, patches_replace=hide_block_info(), **x), named)
    assert not torch.equal(named, run(flux3, **x))
    with pytest.raises(ValueError, match="update ComfyUI to 0.3.76 or newer"):
        run(flux3, wrapper, patches_replace=hide_block_info(skip=("single_block", 1)), **x)
