"""Text RoPE positions for families whose text tokens sit at sequential positions (Qwen-Image: token j of the
prompt at txt_start + j; FLUX.2: at j of the prompt left-padded to 512; see families.py `text_positions`).

Putting the region texts before the base text would move every text to later positions than it has alone. The
paper's rule wants each region text to meet the image exactly as that prompt alone would, and the base text to keep
its own positions (so that the plain parts of the step stay the plain model's). The model computes its RoPE table
`pe` for [text (region texts + base text) | image | extra], text rows at txt_start, txt_start + 1, ...; row j of
that table is position txt_start + j, so gathering rows [0..T1) for region 1, [0..T2) for region 2, ..., [0..T0)
for the base text gives every text its own positions, bit for bit the rows the model computes for that prompt
alone. The gather runs in ComfyUI's block-replace patch point (patches_replace["dit"][(kind + "_block", i)], whose
args carry "pe"), chaining any replacement already there. Region texts never attend to each other or to the base
text in masked blocks, so their shared positions cannot mix them up.

Z-Image has no block patch point, so its region texts are moved inside the attention override instead, after RoPE
(`rotated_text_rows`): RoPE's rotations compose, so turning a token's q and k by s more positions on the text axis
equals RoPE at its position + s. Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

import torch
from torch import Tensor

PE_TOKEN_DIM = 2  # EmbedND's table is [B, 1, L, D / 2, 2, 2]


def own_text_position_rows(text_lens: tuple[int, ...], base_len: int, length: int, pad_left_to: int = 0) -> Tensor:
    """For the joint sequence [region texts (text_lens) | base text (base_len) | image | extra] of `length` tokens:
    the row of the model's sequential RoPE table each token takes so that every text starts at the first text
    position; image and extra tokens keep their rows.

    `pad_left_to` (FLUX.2: 512): the model left-pads a prompt to that many tokens before it reaches the model, so
    the base text arrives padded and keeps its rows, and a region text of n real tokens takes rows
    max(pad_left_to - n, 0) + j, where it sits alone (after its padding). A base text shorter than that did not
    come through the padding, so neither would the region texts: they then start at the first row too."""
    n_text = sum(text_lens) + base_len
    pad = pad_left_to if base_len >= pad_left_to else 0
    parts = [torch.arange(n) + max(pad - n, 0) for n in text_lens] + [torch.arange(base_len)]
    return torch.cat(parts + [torch.arange(n_text, length)])


def with_own_text_positions(
    patches_replace: dict | None, rows: Tensor, block_kinds: tuple[str, ...], block_counts: tuple[int, ...]
) -> dict:
    """A copy of transformer_options["patches_replace"] whose "dit" block entries hand every block the RoPE table
    gathered by `rows` (and then call the replacement that was there, or the block itself)."""
    patches = dict(patches_replace or {})
    dit = dict(patches.get("dit", {}))
    last: list = [None, None]  # (table, gathered): one gather per model call, not per block

    def gathered(pe: Tensor) -> Tensor:
        if last[0] is not pe:
            if pe.shape[PE_TOKEN_DIM] != len(rows):
                raise ValueError(
                    f"Regional FLUX: the RoPE table has {pe.shape[PE_TOKEN_DIM]} tokens, expected "
                    f"{len(rows)}; another patch changes the model's tokens"
                )
            last[:] = [pe, pe.index_select(PE_TOKEN_DIM, rows.to(pe.device))]
        return last[1]

    def patch_for(previous):
        def patch(args, extra):
            args = {**args, "pe": gathered(args["pe"])}
            return previous(args, extra) if previous is not None else extra["original_block"](args)

        return patch

    for kind, count in zip(block_kinds, block_counts):
        for i in range(count):
            key = (f"{kind}_block", i)
            dit[key] = patch_for(dit.get(key))
    patches["dit"] = dit
    return patches


def padded_text_shifts(text_lens: tuple[int, ...], text_end: int, length: int, multiple: int) -> Tensor:
    """[length] position shifts for the joint sequence [region texts (text_lens) | filler | base text and its pads
    (up to text_end) | image ...] of a model that numbers the caption 1, 2, ... and puts the image right after the
    caption padded to `multiple` (Z-Image): region text i moves so that it ends where that prompt alone, padded,
    ends before the image (text_end - its padded length - where it starts); every other token stays."""
    shifts = torch.zeros(length, dtype=torch.long)
    start = 0
    for n in text_lens:
        shifts[start : start + n] = text_end - (n + -n % multiple) - start
        start += n
    return shifts


def rotated_text_rows(q: Tensor, k: Tensor, shifts: Tensor, dims: int, theta: float) -> tuple[Tensor, Tensor]:
    """q, k [B, H, L, D] after RoPE, with every token row moved `shifts` [L] positions further on the RoPE axis that
    takes the first `dims` of D (pairs (2m, 2m + 1) turned by position * theta^(-2m / dims), ComfyUI's EmbedND
    layout). Rows with shift 0 are not touched."""
    rows = torch.nonzero(shifts).flatten().to(q.device)
    if not len(rows):
        return q, k
    omega = 1.0 / theta ** (torch.arange(0, dims, 2, dtype=torch.float64) / dims)
    angle = shifts[rows.cpu()].double()[:, None] * omega
    cos, sin = angle.cos().float().to(q.device), angle.sin().float().to(q.device)

    def turn(t: Tensor) -> Tensor:
        pairs = t.index_select(2, rows)[..., :dims].float().unflatten(-1, (-1, 2))
        x0, x1 = pairs[..., 0], pairs[..., 1]
        turned = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], -1).flatten(-2).to(t.dtype)
        out = t.clone()
        out[:, :, rows, :dims] = turned
        return out

    return turn(q), turn(k)
