"""Region-aware joint attention for FLUX (Chen et al., "Training-free Regional Prompting for Diffusion
Transformers", arXiv 2411.02395), computed per region instead of through a dense L x L mask.

The joint sequence is [base text | region 1 text | ... | region G text | image (N) | extra image tokens].
Regional attention (the paper's mask): region i's text attends to itself and to region i's image tokens; an
image token attends to the texts of its regions and to the image tokens it shares a region with; image tokens
outside every region attend to each other. Base attention is plain attention over [base text | image | extra].
Image rows get (1 - beta) * regional + beta * base; region text rows the regional result; base text and extra rows
the base result.

Fast path (hard, disjoint regions): image tokens are grouped by region and each group attends only to its own
keys. Base and regional attention of a group share the partial softmax over the group's own image keys; partial
results are merged with their log-sum-exp, so the beta blend costs almost nothing beyond plain attention.
Dense path (overlaps, soft masks): the paper's mask as an additive log-weight bias, exact, at dense cost.
Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .token_masks import TokenMasks

MATH_CHUNK = 1024  # query rows per chunk in the math fallback


# ---------------------------------------------------------------------------------------------------------
# Partial softmax attention


def _math_attention_lse(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    scale = q.shape[-1] ** -0.5
    outs, lses = [], []
    for start in range(0, q.shape[2], MATH_CHUNK):
        scores = (q[:, :, start:start + MATH_CHUNK].float() @ k.float().transpose(-1, -2)) * scale
        lse = torch.logsumexp(scores, dim=-1)
        outs.append((torch.exp(scores - lse[..., None]) @ v.float()).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def attention_lse(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ / √d) v and its log-sum-exp: ([B, H, Lq, D] in q's dtype, [B, H, Lq] float32). Lk > 0."""
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)[:2]
        return out, lse
    if q.device.type == "cuda":
        try:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
            return out, lse[:, :, :q.shape[2]].float()
        except RuntimeError:
            pass
    return _math_attention_lse(q, k, v)


def merge_partials(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Softmax attention over the union of disjoint key sets, from each set's (output, log-sum-exp)."""
    if len(parts) == 1:
        return parts[0][0].float(), parts[0][1]
    lse = torch.logsumexp(torch.stack([p[1] for p in parts]), dim=0)
    out = sum(p[0].float() * torch.exp(p[1] - lse)[..., None] for p in parts)
    return out, lse


# ---------------------------------------------------------------------------------------------------------
# The plan of one joint sequence


@dataclass(eq=False)
class SequencePlan:
    """Where every part of the joint sequence lies, and how image tokens group by region."""

    base_len: int                 # base prompt tokens (T0)
    text_lens: tuple[int, ...]    # one per region row of `masks` (the background last, if any)
    masks: TokenMasks
    n_extra: int = 0              # image tokens after the grid (e.g. reference latents): base attention only
    force_dense: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.text_lens) != self.masks.hard.shape[0]:
            raise ValueError(f"{len(self.text_lens)} region texts for {self.masks.hard.shape[0]} region masks")

    @property
    def n_img(self) -> int:
        return self.masks.hard.shape[1]

    @property
    def img_start(self) -> int:
        return self.base_len + sum(self.text_lens)

    @property
    def length(self) -> int:
        return self.img_start + self.n_img + self.n_extra

    @property
    def dense(self) -> bool:
        return self.force_dense or self.masks.soft or not self.masks.disjoint

    def text_spans(self) -> list[tuple[int, int]]:
        spans, start = [], self.base_len
        for n in self.text_lens:
            spans.append((start, n))
            start += n
        return spans

    def groups(self, device: torch.device) -> tuple[Tensor, Tensor, list[tuple[int, int, int, int]]]:
        """(image order sorted by group, base-key order, [(img_start, img_end, text_start, text_len)] per group)
        for the fast path. Base keys are [base text | image sorted by group | extra]; tokens outside every
        region form a last group without text."""
        key = ("groups", str(device))
        if key not in self._cache:
            hard = self.masks.hard
            group = torch.where(hard.any(0), hard.float().argmax(0), torch.full((self.n_img,), hard.shape[0]))
            order = torch.argsort(group, stable=True)
            counts = torch.bincount(group, minlength=hard.shape[0] + 1).tolist()
            spans = self.text_spans() + [(0, 0)]
            table, start = [], 0
            for g, count in enumerate(counts):
                if count:
                    table.append((start, start + count, *spans[g]))
                start += count
            img = self.img_start
            base_keys = torch.cat([torch.arange(self.base_len), order + img,
                                   torch.arange(img + self.n_img, self.length)])
            self._cache[key] = ((order + img).to(device), base_keys.to(device), table)
        return self._cache[key]

    def dense_bias(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """[Lr, Lr] additive log-weight mask over [region texts | image] (-inf where attention is not allowed)."""
        key = ("bias", str(device), dtype)
        if key not in self._cache:
            weights = torch.cat([text_row_weights(self.text_lens, self.masks.weights),
                                 image_row_weights(self.text_lens, self.masks.weights)])
            self._cache[key] = torch.log(weights).to(device, dtype)
        return self._cache[key]

    def text_bias(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The region-text rows of `dense_bias` only ([ΣT, Lr]), cheap to build."""
        key = ("text_bias", str(device), dtype)
        if key not in self._cache:
            self._cache[key] = torch.log(text_row_weights(self.text_lens, self.masks.weights)).to(device, dtype)
        return self._cache[key]


def text_row_weights(text_lens: tuple[int, ...], weights: Tensor) -> Tensor:
    """The region-text rows of the paper's mask over [region texts | image], as weights in [0, 1]:
    text i ↔ text i: 1 (no text-to-text across regions); text i → image q: w_i(q)."""
    n_txt = sum(text_lens)
    out = torch.zeros(n_txt, n_txt + weights.shape[1])
    start = 0
    for i, n in enumerate(text_lens):
        out[start:start + n, start:start + n] = 1
        out[start:start + n, n_txt:] = weights[i][None]
        start += n
    return out


def image_row_weights(text_lens: tuple[int, ...], weights: Tensor) -> Tensor:
    """The image rows of the paper's mask (soft masks: min/max rules): image p → text i: w_i(p);
    image p → image q: max(max_i min(w_i(p), w_i(q)), min(1 - u(p), 1 - u(q))), u = max_i w_i."""
    n_img = weights.shape[1]
    to_text = torch.cat([weights[i][:, None].expand(n_img, n) for i, n in enumerate(text_lens)], 1) \
        if text_lens else torch.zeros(n_img, 0)
    img = torch.zeros(n_img, n_img)
    for w in weights:
        img = torch.maximum(img, torch.minimum(w[:, None], w[None, :]))
    outside = 1 - (weights.max(0).values if weights.shape[0] else torch.zeros(n_img))
    img = torch.maximum(img, torch.minimum(outside[:, None], outside[None, :]))
    return torch.cat([to_text, img], 1)


# ---------------------------------------------------------------------------------------------------------
# Attention over the joint sequence


def regional_attention(q: Tensor, k: Tensor, v: Tensor, plan: SequencePlan, beta: float) -> Tensor:
    """Masked-block attention: q, k, v [B, H, L, D] (after RoPE) → [B, L, H·D]."""
    if q.shape[2] != plan.length:
        raise ValueError(f"joint sequence has {q.shape[2]} tokens, the regional plan expects {plan.length}")
    out = _dense(q, k, v, plan, beta) if plan.dense else _grouped(q, k, v, plan, beta)
    return out.transpose(1, 2).flatten(2)


def _grouped(q: Tensor, k: Tensor, v: Tensor, plan: SequencePlan, beta: float) -> Tensor:
    img_order, base_keys, table = plan.groups(q.device)
    t0, img, n_img = plan.base_len, plan.img_start, plan.n_img
    kb, vb = k.index_select(2, base_keys), v.index_select(2, base_keys)  # [base text | sorted image | extra]
    qi = q.index_select(2, img_order)
    out = torch.empty_like(q)
    img_out = torch.empty_like(qi)
    for s, e, ts, tl in table:
        k_own, v_own = kb[:, :, t0 + s:t0 + e], vb[:, :, t0 + s:t0 + e]
        if tl:  # region text rows: own text + own image
            k_txt, v_txt = k[:, :, ts:ts + tl], v[:, :, ts:ts + tl]
            qt = q[:, :, ts:ts + tl]
            out[:, :, ts:ts + tl] = merge_partials([attention_lse(qt, k_txt, v_txt),
                                                    attention_lse(qt, k_own, v_own)])[0].to(q.dtype)
        # image rows: every partial once, then one weighted sum = (1 - beta) * regional + beta * base
        qg = qi[:, :, s:e]
        own = attention_lse(qg, k_own, v_own)
        regional = [own] + ([attention_lse(qg, k_txt, v_txt)] if tl else [])
        reg_lse = torch.logsumexp(torch.stack([p[1] for p in regional]), 0)
        terms = [(o, (1 - beta) * torch.exp(lse - reg_lse)) for o, lse in regional]
        if beta > 0:
            base = [own] + [attention_lse(qg, kb[:, :, lo:hi], vb[:, :, lo:hi])
                            for lo, hi in ((0, t0 + s), (t0 + e, kb.shape[2])) if hi > lo]
            base_lse = torch.logsumexp(torch.stack([p[1] for p in base]), 0)
            terms[0] = (own[0], terms[0][1] + beta * torch.exp(own[1] - base_lse))
            terms += [(o, beta * torch.exp(lse - base_lse)) for o, lse in base[1:]]
        acc = terms[0][0].float().mul_(terms[0][1][..., None])  # float32 (same-dtype ops are the fast ones)
        for o, w in terms[1:]:
            acc.addcmul_(o.float(), w[..., None])
        img_out[:, :, s:e] = acc
    out.index_copy_(2, img_order, img_out)
    for lo, hi in ((0, t0), (img + n_img, plan.length)):  # base text and extra rows: plain attention
        if hi > lo:
            out[:, :, lo:hi] = attention_lse(q[:, :, lo:hi], kb, vb)[0]
    return out


def _dense(q: Tensor, k: Tensor, v: Tensor, plan: SequencePlan, beta: float) -> Tensor:
    t0, img, end = plan.base_len, plan.img_start, plan.img_start + plan.n_img
    bias = plan.dense_bias(q.device, q.dtype)
    regional = F.scaled_dot_product_attention(q[:, :, t0:end], k[:, :, t0:end], v[:, :, t0:end], attn_mask=bias)
    out = torch.empty_like(q)
    out[:, :, t0:end] = regional
    base_idx = torch.cat([torch.arange(t0), torch.arange(img, plan.length)]).to(q.device)
    qb, kb, vb = (t.index_select(2, base_idx) for t in (q, k, v))
    base = F.scaled_dot_product_attention(qb, kb, vb)
    out[:, :, :t0] = base[:, :, :t0]
    out[:, :, end:] = base[:, :, t0 + plan.n_img:]
    if beta > 0:
        out[:, :, img:end] = torch.lerp(regional[:, :, img - t0:].float(), base[:, :, t0:t0 + plan.n_img].float(),
                                        beta).to(q.dtype)
    return out


def unmasked_block_attention(q: Tensor, k: Tensor, v: Tensor, plan: SequencePlan, plain) -> Tensor:
    """An unselected block in a regional step: base text and image rows get plain attention over the base tokens
    through `plain(q, k, v) -> [B, L, H·D]` (the model's own back end), so the image sees no region text; region
    text rows get their regional attention. → [B, L, H·D]."""
    t0, img = plan.base_len, plan.img_start
    if img == t0:
        return plain(q, k, v)
    base_idx = torch.cat([torch.arange(t0), torch.arange(img, plan.length)]).to(q.device)
    base = plain(*(t.index_select(2, base_idx) for t in (q, k, v)))
    B, H, L, D = q.shape
    out = q.new_empty(B, L, H * D)
    out[:, :t0] = base[:, :t0]
    out[:, img:] = base[:, t0:]
    end = img + plan.n_img
    text = F.scaled_dot_product_attention(q[:, :, t0:img], k[:, :, t0:end], v[:, :, t0:end],
                                          attn_mask=plan.text_bias(q.device, q.dtype))
    out[:, t0:img] = text.transpose(1, 2).flatten(2)
    return out
