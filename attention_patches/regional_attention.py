"""Region-aware joint attention for FLUX (Chen et al., "Training-free Regional Prompting for Diffusion
Transformers", arXiv 2411.02395), computed per region instead of through a dense L x L mask.

The joint sequence is [region 1 text | ... | region G text | base text | image (N) | extra image tokens]: the
region texts go first so that the base attention's tokens, [base text | image | extra], are one contiguous slice.
Regional attention (the paper's mask): region i's text attends to itself and to region i's image tokens; an
image token attends to the texts of its regions and to the image tokens it shares a region with; image tokens
outside every region attend to each other. Base attention is plain attention over [base text | image | extra].
Image rows get (1 - beta) * regional + beta * base; region text rows the regional result; base text and extra rows
the base result.

Grouped path (hard, disjoint regions): region i's text and image tokens attend to the same keys (its text and
its image), so regional attention is one small unmasked attention per region, and the base result is the plain
model's attention on a view of the sequence: plain cost + Σ (tokens of region i)², no mask, no padding. With
beta = 0 the image rows need no base attention, so only the base text (and extra) rows get it.
Dense path (overlaps, soft masks): the paper's mask as an additive log-weight bias, exact, at dense cost.
Blocks outside the chosen set (during a control step) follow the official code: the same two attentions and the
same beta blend, with the regional one unmasked (`unselected_block_attention`).
Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .token_masks import TokenMasks

# ---------------------------------------------------------------------------------------------------------
# The plan of one joint sequence


@dataclass(eq=False)
class SequencePlan:
    """Where every part of the joint sequence lies, and how image tokens group by region."""

    base_len: int  # base prompt tokens (T0)
    text_lens: tuple[int, ...]  # one per region row of `masks` (the background last, if any)
    masks: TokenMasks
    n_extra: int = 0  # image tokens after the grid (e.g. reference latents): base attention only
    force_dense: bool = False
    # zero tokens between the region texts and the base text (families.py `pad_multiple`): no key anywhere, their
    # rows come out as zeros
    filler: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.text_lens) != self.masks.hard.shape[0]:
            raise ValueError(f"{len(self.text_lens)} region texts for {self.masks.hard.shape[0]} region masks")

    @property
    def n_img(self) -> int:
        return self.masks.hard.shape[1]

    @property
    def n_text(self) -> int:
        """Region text tokens (the first of the sequence)."""
        return sum(self.text_lens)

    @property
    def base_start(self) -> int:
        """Where the base text starts: after every region text and the filler. [base_start, length) is the base
        attention's."""
        return self.n_text + self.filler

    @property
    def img_start(self) -> int:
        return self.base_start + self.base_len

    @property
    def img_end(self) -> int:
        return self.img_start + self.n_img

    @property
    def length(self) -> int:
        return self.img_end + self.n_extra

    @property
    def dense(self) -> bool:
        return self.force_dense or self.masks.soft or not self.masks.disjoint

    def text_spans(self) -> list[tuple[int, int]]:
        spans, start = [], 0
        for n in self.text_lens:
            spans.append((start, n))
            start += n
        return spans

    def grouped_index(self, device: torch.device) -> tuple[Tensor, list[tuple[int, int]]]:
        """For the grouped path: the joint-sequence positions of every region's text followed by its image tokens,
        region after region ([text 1 | image 1 | text 2 | image 2 | ...]), and each region's (start, end) in that
        order. Tokens outside every region form a last group without text. Every region text and image token
        appears exactly once."""
        key = ("grouped", str(device))
        if key not in self._cache:
            hard = self.masks.hard
            group = torch.where(hard.any(0), hard.float().argmax(0), torch.full((self.n_img,), hard.shape[0]))
            spans = self.text_spans() + [(0, 0)]
            parts, table, start = [], [], 0
            for g, (ts, tl) in enumerate(spans):
                image = torch.nonzero(group == g).flatten() + self.img_start
                if not len(image):
                    continue  # a region without image tokens: its text is in no group (see _grouped)
                parts += [torch.arange(ts, ts + tl), image]
                table.append((start, start + tl + len(image)))
                start += tl + len(image)
            self._cache[key] = (torch.cat(parts).to(device), table)
        return self._cache[key]

    def regional_index(self, device: torch.device) -> Tensor:
        """Positions of the dense path's tokens: [region texts | image] (no filler, no base text)."""
        key = ("regional", str(device))
        if key not in self._cache:
            self._cache[key] = torch.cat([torch.arange(self.n_text), torch.arange(self.img_start, self.img_end)]).to(
                device
            )
        return self._cache[key]

    def dense_bias(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """[Lr, Lr] additive log-weight mask over [region texts | image] (-inf where attention is not allowed)."""
        key = ("bias", str(device), dtype)
        if key not in self._cache:
            weights = torch.cat(
                [
                    text_row_weights(self.text_lens, self.masks.weights),
                    image_row_weights(self.text_lens, self.masks.weights),
                ]
            )
            self._cache[key] = torch.log(weights).to(device, dtype)
        return self._cache[key]

    def text_bias(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The region-text rows of the mask over the keys [region texts | filler | base text | image] ([ΣT, img
        end]), the filler's and base text's columns closed: cheap to build, and used on a slice of the sequence
        without a gather."""
        key = ("text_bias", str(device), dtype)
        if key not in self._cache:
            weights = text_row_weights(self.text_lens, self.masks.weights)
            closed = weights.new_zeros(weights.shape[0], self.filler + self.base_len)
            n_txt = self.n_text
            weights = torch.cat([weights[:, :n_txt], closed, weights[:, n_txt:]], 1)
            self._cache[key] = torch.log(weights).to(device, dtype)
        return self._cache[key]


def text_row_weights(text_lens: tuple[int, ...], weights: Tensor) -> Tensor:
    """The region-text rows of the paper's mask over [region texts | image], as weights in [0, 1]:
    text i ↔ text i: 1 (no text-to-text across regions); text i → image q: w_i(q)."""
    n_txt = sum(text_lens)
    out = torch.zeros(n_txt, n_txt + weights.shape[1])
    start = 0
    for i, n in enumerate(text_lens):
        out[start : start + n, start : start + n] = 1
        out[start : start + n, n_txt:] = weights[i][None]
        start += n
    return out


def image_row_weights(text_lens: tuple[int, ...], weights: Tensor) -> Tensor:
    """The image rows of the paper's mask (soft masks: min/max rules): image p → text i: w_i(p);
    image p → image q: max(max_i min(w_i(p), w_i(q)), min(1 - u(p), 1 - u(q))), u = max_i w_i."""
    n_img = weights.shape[1]
    to_text = (
        torch.cat([weights[i][:, None].expand(n_img, n) for i, n in enumerate(text_lens)], 1)
        if text_lens
        else torch.zeros(n_img, 0)
    )
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
    """Hard, disjoint regions: region i's text and image tokens attend to exactly the same keys (text i and image
    i), so each region is one unmasked attention over its own tokens; the base prompt is one plain attention over
    [base text | image | extra], as in the unpatched model. Cost: plain attention + Σ (tokens of region i)²."""
    index, table = plan.grouped_index(q.device)
    nt, img, end = plan.n_text, plan.img_start, plan.img_end
    out = torch.empty_like(q)
    out[:, :, nt : plan.base_start] = 0  # the filler
    base = _base_attention(q, k, v, plan, beta, out)
    if nt and len(index) < nt + plan.n_img:  # a region text whose region holds no image token
        out[:, :, :nt] = F.scaled_dot_product_attention(
            q[:, :, :nt], k[:, :, :end], v[:, :, :end], attn_mask=plan.text_bias(q.device, q.dtype)
        )
    qr, kr, vr = (t.index_select(2, index) for t in (q, k, v))
    for s, e in table:
        out.index_copy_(2, index[s:e], F.scaled_dot_product_attention(qr[:, :, s:e], kr[:, :, s:e], vr[:, :, s:e]))
    if base is not None:
        out[:, :, img:end].lerp_(base, beta)
    return out


def _base_attention(q: Tensor, k: Tensor, v: Tensor, plan: SequencePlan, beta: float, out: Tensor) -> Tensor | None:
    """Plain attention over the base tokens [base text | image | extra] (a view: no gather). Writes the base text
    and extra rows into `out`; returns the image rows' result for the beta blend, or None when beta is 0: then
    the image rows take no base attention at all, and only the base text and extra rows are computed."""
    bs, img, end = plan.base_start, plan.img_start, plan.img_end
    kb, vb = k[:, :, bs:], v[:, :, bs:]
    if beta == 0:
        out[:, :, bs:img] = F.scaled_dot_product_attention(q[:, :, bs:img], kb, vb)
        if end < plan.length:
            out[:, :, end:] = F.scaled_dot_product_attention(q[:, :, end:], kb, vb)
        return None
    base = F.scaled_dot_product_attention(q[:, :, bs:], kb, vb)
    out[:, :, bs:img] = base[:, :, : img - bs]
    out[:, :, end:] = base[:, :, end - bs :]
    return base[:, :, img - bs : end - bs]


def _dense(q: Tensor, k: Tensor, v: Tensor, plan: SequencePlan, beta: float) -> Tensor:
    nt, img, end = plan.n_text, plan.img_start, plan.img_end
    ridx = plan.regional_index(q.device)
    regional = F.scaled_dot_product_attention(
        *(t.index_select(2, ridx) for t in (q, k, v)), attn_mask=plan.dense_bias(q.device, q.dtype)
    )
    out = torch.empty_like(q)
    base = _base_attention(q, k, v, plan, beta, out)
    out[:, :, :nt] = regional[:, :, :nt]
    out[:, :, nt : plan.base_start] = 0  # the filler
    if base is not None:
        out[:, :, img:end] = torch.lerp(regional[:, :, nt:].float(), base.float(), beta).to(q.dtype)
    else:
        out[:, :, img:end] = regional[:, :, nt:]
    return out


def unselected_block_attention(q: Tensor, k: Tensor, v: Tensor, plan: SequencePlan, beta: float, plain) -> Tensor:
    """A block outside the chosen set, during a control step. The official code (transformer_flux.py) drops only
    the mask there: region texts and image rows attend, unmasked, over [region texts | image], and the image rows
    are still blended (1 - beta) * regional + beta * base. Base text and extra rows take the base attention, which
    runs through `plain(q, k, v) -> [B, Lq, H·D]` (the model's own back end). The filler (families.py
    `pad_multiple`) is in neither attention's keys: its rows are zeros. → [B, L, H·D]."""
    nt, bs, img, end = plan.n_text, plan.base_start, plan.img_start, plan.img_end
    B, H, L, D = q.shape
    ridx = plan.regional_index(q.device)
    regional = F.scaled_dot_product_attention(*(t.index_select(2, ridx) for t in (q, k, v)))
    regional = regional.transpose(1, 2).flatten(2)  # [B, region texts + image, H·D]
    out = q.new_empty(B, L, H * D)
    out[:, :nt] = regional[:, :nt]
    out[:, nt:bs] = 0
    kb, vb = k[:, :, bs:], v[:, :, bs:]
    if beta == 0:  # the image rows take no base attention: only base text and extra rows do
        rows = torch.cat([torch.arange(bs, img), torch.arange(end, L)]).to(q.device)
        out[:, rows] = plain(q.index_select(2, rows), kb, vb)
        out[:, img:end] = regional[:, nt:]
        return out
    out[:, bs:] = plain(q[:, :, bs:], kb, vb)
    out[:, img:end] = torch.lerp(regional[:, nt:], out[:, img:end], beta)
    return out


def separate_text_attention(q: Tensor, k: Tensor, v: Tensor, plan: SequencePlan, plain) -> Tensor:
    """A self-attention over the text alone, [region texts | filler | base text] (Z-Image's context_refiner):
    every region text attends to itself only, as that prompt alone; the base text (with the model's pad tokens)
    through `plain` (the model's own back end); filler rows are zeros. q, k, v [B, H, Lt, D] → [B, Lt, H·D]."""
    B, H, L, D = q.shape
    bs = plan.base_start
    out = q.new_zeros(B, L, H * D)
    for start, n in plan.text_spans():
        part = slice(start, start + n)
        out[:, part] = (
            F.scaled_dot_product_attention(q[:, :, part], k[:, :, part], v[:, :, part]).transpose(1, 2).flatten(2)
        )
    out[:, bs:] = plain(q[:, :, bs:], k[:, :, bs:], v[:, :, bs:])
    return out
