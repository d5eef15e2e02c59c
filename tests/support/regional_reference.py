"""The regional attention rule written out naively (dense boolean masks, one loop per rule), independent of the
pack's code, and small helpers shared by the tests of every model family."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_reference(q, k, v, t0, text_lens, hard, beta, masked=True, allow=None, filler=0):
    """The joint sequence is [region texts | base text (t0) | image | extra]. A dense boolean mask over
    [region texts | image], per the paper's rules, plus plain base attention over [base text | image | extra];
    image rows blended (1 - beta) * regional + beta * base. `masked=False` is the official code's rule for a block
    outside the chosen set during a control step: the same two attentions and the same blend, without the mask.
    `allow`: a mask over [region texts | image] to use instead of the hard rules (soft masks: soft_allow).
    `filler`: that many tokens between the region texts and the base text (Z-Image) that no token sees: they are
    cut out of the sequence, and their rows are zeros."""
    B, H, L, D = q.shape
    if filler:
        n = sum(text_lens)
        keep = torch.cat([torch.arange(n), torch.arange(n + filler, L)])
        out = q.new_zeros(B, L, H * D)
        out[:, keep] = naive_reference(
            q[:, :, keep], k[:, :, keep], v[:, :, keep], t0, text_lens, hard, beta, masked, allow
        )
        return out
    n_txt, n_img = sum(text_lens), hard.shape[1]
    img0 = n_txt + t0
    owner = []  # region index of each text token
    for i, n in enumerate(text_lens):
        owner += [i] * n
    lr = n_txt + n_img
    given, allow = allow, torch.zeros(lr, lr, dtype=torch.bool)
    for a in range(n_txt):
        for b in range(n_txt):
            allow[a, b] = owner[a] == owner[b]
        allow[a, n_txt:] = hard[owner[a]]
        allow[n_txt:, a] = hard[owner[a]]
    outside = ~hard.any(0)
    for p in range(n_img):
        for r in range(n_img):
            shared = bool((hard[:, p] & hard[:, r]).any())
            allow[n_txt + p, n_txt + r] = shared or bool(outside[p] and outside[r])
    if given is not None:
        allow = given
    if not masked:
        allow = torch.ones(lr, lr, dtype=torch.bool)
    regional_idx = torch.cat([torch.arange(n_txt), torch.arange(img0, img0 + n_img)])
    regional = F.scaled_dot_product_attention(
        q[:, :, regional_idx], k[:, :, regional_idx], v[:, :, regional_idx], attn_mask=allow
    )
    base_idx = torch.arange(n_txt, L)
    base = F.scaled_dot_product_attention(q[:, :, base_idx], k[:, :, base_idx], v[:, :, base_idx])
    out = torch.empty_like(q)
    out[:, :, :n_txt] = regional[:, :, :n_txt]
    out[:, :, n_txt:img0] = base[:, :, :t0]
    out[:, :, img0 : img0 + n_img] = (1 - beta) * regional[:, :, n_txt:] + beta * base[:, :, t0 : t0 + n_img]
    out[:, :, img0 + n_img :] = base[:, :, t0 + n_img :]
    return out.transpose(1, 2).reshape(B, L, H * D)


def soft_allow(text_lens, w):
    """The soft rules written out token by token, as an additive log-weight mask over [region texts | image]:
    text i <-> text i: 1, across regions 0; text i <-> image p: w_i(p); image p -> image r:
    max(max_i min(w_i(p), w_i(r)), min(1 - u(p), 1 - u(r))), u = max_i w_i."""
    owner = [i for i, n in enumerate(text_lens) for _ in range(n)]
    n_txt, n_img = len(owner), w.shape[1]
    u = w.max(0).values
    weight = torch.zeros(n_txt + n_img, n_txt + n_img)
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
                shared = max(min(w[i, p], w[i, r]) for i in range(w.shape[0]))
                weight[a, b] = max(shared, min(1 - u[p], 1 - u[r]))
    return torch.log(weight)


def rect(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1
    return m


def layouts(h, w):
    """Pixel masks at h x w: disjoint and overlapping sets for R = 1..4."""
    disjoint = [
        rect(h, w, 0, h // 2, 0, w // 2),
        rect(h, w, 0, h // 2, w // 2, w),
        rect(h, w, h // 2, h, 0, w // 3),
        rect(h, w, h // 2, h, w // 3, 2 * w // 3),
    ]
    overlapping = [
        rect(h, w, 0, 2 * h // 3, 0, 2 * w // 3),
        rect(h, w, h // 3, h, w // 3, w),
        rect(h, w, 0, h // 3, w // 2, w),
        rect(h, w, h // 2, h, 0, w // 4),
    ]
    return disjoint, overlapping


def random_regional_cond(width, height, ctx, lengths, *, seed=0, background=False, overlap=False, order=None):
    """Regional conditioning over `layouts` masks with seeded random text embeddings ([1, n, ctx] for each n in
    `lengths`; the background 3 tokens); `order` lists the regions (and their embeddings) in another order."""
    from regional_layout.attention_patches.regional_cond import RegionalConditioning
    from regional_layout.layout.regions import Region, RegionLayout

    masks = layouts(height, width)[overlap][: len(lengths)]
    gen = torch.Generator().manual_seed(seed)
    embeds = [torch.randn(1, n, ctx, generator=gen) for n in lengths]
    bg = torch.randn(1, 3, ctx, generator=torch.Generator().manual_seed(99)) if background else None
    regions = [Region(f"region {i}", m) for i, m in enumerate(masks)]
    order = order or range(len(lengths))
    return RegionalConditioning(
        RegionLayout(width, height, tuple(regions[i] for i in order), "base", "bg" if background else ""),
        tuple(embeds[i] for i in order),
        bg,
    )


def naive_separate_texts(q, k, v, text_lens, filler):
    """Self-attention over the text alone, [region texts | filler | base text and its pads] (Z-Image's caption
    refiner), with a block-diagonal boolean mask: each region text sees itself only, the base text itself only;
    filler rows are zeros. → [B, L, H·D]."""
    B, H, L, D = q.shape
    owner = [i for i, n in enumerate(text_lens) for _ in range(n)]
    owner += [-1] * filler + [len(text_lens)] * (L - len(owner) - filler)
    allow = torch.tensor([[a == b for b in owner] for a in owner])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allow)
    out[:, :, torch.tensor(owner) == -1] = 0
    return out.transpose(1, 2).reshape(B, L, H * D)


def reference_override(plan, beta, double, single, calls, soft=False, text_refiners=0, turn=None, per_token=0):
    """An attention override computing the naive reference for every joint attention of the tiny FLUX: masked in
    the chosen blocks, unmasked (official rule) in the others; `soft`: with the plan's soft weights. Hosts without
    block info (Z-Image on 0.3.76): the joint calls are counted, all "double". `text_refiners` (Z-Image): the model
    first runs that many caption-only attentions (each text alone: naive_separate_texts), then image-only ones
    (plain), all shorter than the joint sequence. `turn` (Z-Image): a function moving the joint calls' q and k to
    other RoPE positions first. `per_token` (Krea 2): before the text refiners, that many attentions over each
    token's text-encoder layers (no token sees another): plain."""
    allow = soft_allow(plan.text_lens, plan.masks.weights) if soft else None  # the loops once, not per call
    refiners, prelude = [], []

    def override(func, q, k, v, heads, mask=None, **kwargs):
        opts = kwargs.get("transformer_options") or {}
        if len(prelude) < per_token:
            prelude.append(q.shape[2])
            return func(q, k, v, heads, mask=mask, **kwargs)
        if q.shape[2] < plan.length and not calls:
            refiners.append(q.shape[2])
            if len(refiners) <= text_refiners:
                return naive_separate_texts(q, k, v, plan.text_lens, plan.filler)
            return func(q, k, v, heads, mask=mask, **kwargs)
        if turn is not None:
            q, k = turn(q, k)
        index = opts.get("block_index", len(calls))
        chosen = double if opts.get("block_type", "double") == "double" else single
        calls.append(index)
        return naive_reference(
            q,
            k,
            v,
            plan.base_len,
            plan.text_lens,
            plan.masks.hard,
            beta,
            masked=index in chosen,
            allow=allow,
            filler=plan.filler,
        )

    return override


def hide_block_info(skip=None):
    """patches_replace['dit'] entries (ComfyUI's own block-replace patch point) that hide which block runs, as
    ComfyUI before 0.3.76 does; `skip` = a block that is skipped instead of run (what a block-skipping patch does)."""

    def make(key):
        def patch(args, extra):
            if key == skip:
                return {k: args[k] for k in ("img", "txt") if k in args}
            opts = {k: v for k, v in args["transformer_options"].items() if k not in ("block_type", "block_index")}
            return extra["original_block"]({**args, "transformer_options": opts})

        return patch

    keys = [(f"{kind}_block", i) for kind in ("double", "single") for i in range(3)]
    return {"dit": {key: make(key) for key in keys}}


def flat_counted_reference_override(plan, beta, double, calls, soft=False):
    """The naive reference for SD3's MMDiT, whose attention gets q, k as [B, L, H·D] (v [B, L, H, D]) and no block: the
    joint calls are counted (one per joint block, in order: block_index = calls so far); a call over the image
    tokens alone (SD3.5's x_block_self_attn) is plain attention over them."""
    inner = reference_override(plan, beta, double, set(), calls, soft)

    def override(func, q, k, v, heads, mask=None, **kwargs):
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))  # v: [B, L, H, D]
        if q.shape[2] == plan.n_img:
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        opts = {"block_type": "double", "block_index": len(calls)}
        return inner(func, q, k, v, heads, transformer_options=opts)

    return override
