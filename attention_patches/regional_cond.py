"""The regional conditioning that flows from the prompt encoder to the FLUX patcher (the RL_REGIONAL_COND type)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout.regions import RegionLayout
from .families import FAMILIES


@dataclass(frozen=True, eq=False)
class RegionalConditioning:
    """Each kept region's text embedding (real tokens only, or for SD3 the whole padded conditioning; [1, T_i, C])
    next to its mask, and the background's.

    `layout.regions` are the kept regions (non-empty mask and prompt), in the order of `embeds`.
    """

    layout: RegionLayout
    embeds: tuple[torch.Tensor, ...]
    background: torch.Tensor | None = None  # [1, T, C]: the background prompt for tokens no region holds

    def __post_init__(self) -> None:
        if len(self.embeds) != len(self.layout.regions):
            raise ValueError(f"{len(self.embeds)} embeddings for {len(self.layout.regions)} regions")
        if not self.embeds and self.background is None:
            raise ValueError("no region and no background prompt")
        widths = {e.shape[-1] for e in self.embeds} | (
            {self.background.shape[-1]} if self.background is not None else set()
        )
        if len(widths) != 1:
            raise ValueError(f"region embeddings differ in width: {sorted(widths)}")

    @property
    def width(self) -> int:
        return (self.embeds[0] if self.embeds else self.background).shape[-1]

    def masks(self) -> torch.Tensor:
        return self.layout.masks()

    def feathers(self) -> list[float]:
        return [r.feather for r in self.layout.regions]


# ---------------------------------------------------------------------------------------------------------
# Encoding (through the CLIP object's own tokenize / encode_from_tokens; no ComfyUI import)

# T5 tokenizer options that turn off ComfyUI's padding (as its T5TokenizerOptions node does): only to count a
# text's real tokens. The embedding itself is computed with the model's own padding.
NO_T5_PADDING = {f"{name}_{option}": 0 for name in ("t5xxl",) for option in ("min_length", "min_padding")}
CLIP_CHUNK = 77
CLIP_END_TOKEN = 49407


def _token_id(pair) -> int | None:
    token = pair[0]
    return int(token) if isinstance(token, int) else None


def _t5_length(tokens: dict) -> int:
    return sum(len(chunk) for chunk in tokens.get("t5xxl", []))


def real_token_positions(tokens: dict, n_t5_real: int, length: int, t5_encoded: bool) -> torch.Tensor | None:
    """Which of an encoder output's `length` positions hold a text's real tokens, or None when that cannot be told
    (then all are kept). `tokens` are the text's tokens as ComfyUI pads them for the model; `n_t5_real` is its
    T5 token count without padding. T5's padding comes after its real tokens; CLIP-L/G pad every 77-token chunk
    with end tokens, and as CLIP is causal, the real positions before the padding do not depend on it.
    """
    n_t5 = _t5_length(tokens)
    clip_chunks = tokens.get("l") or tokens.get("g") or []
    n_clip = CLIP_CHUNK * len(clip_chunks)
    t5_keep = torch.arange(n_t5_real)
    if t5_encoded and length == n_t5 and not (clip_chunks and length == n_clip + n_t5):
        return t5_keep
    if not clip_chunks or length not in (n_clip, n_clip + n_t5):
        return None
    last = [_token_id(p) for p in clip_chunks[-1]]
    end = last.index(CLIP_END_TOKEN, 1) + 1 if CLIP_END_TOKEN in last[1:] else len(last)
    keep = torch.arange(n_clip - CLIP_CHUNK + end)
    return torch.cat([keep, n_clip + t5_keep]) if length > n_clip else keep


def keeps_padding(tokens: dict) -> bool:
    """True when the tokens are of a family whose region texts keep their whole padded conditioning
    (families.py `region_tokens`), told by the tokenizer's sections (the encode node sees only the CLIP).

    Why SD3 keeps the padding: its conditioning is CLIP-L | CLIP-G, each padded to 77 tokens (CLIP-L with end
    tokens, CLIP-G with zeros), and T5 padded to 77, and the MMDiT attends over all of it (no attention mask): the
    padding rows are CLIP's and T5's hidden states, not zeros, and take a large share of the image's attention.
    With the real tokens only, an image token of a region would attend over fewer keys than with that prompt alone,
    so a region over the whole picture at base_ratio 0 would not be the prompt alone; with the whole padded
    conditioning it is, bit for the bits the attention sees (tests/test_regional_sd3.py)."""
    return any(f.region_tokens == "padded" and set(f.text_sections) == set(tokens) for f in FAMILIES.values())


def _encodes_t5(clip) -> bool:
    return getattr(getattr(clip, "cond_stage_model", None), "t5xxl", None) is not None


def encode_texts(clip, texts: list[str]) -> list[torch.Tensor]:
    """Each text's embedding as ComfyUI encodes that prompt alone for the model (FLUX's T5 pads to 256 tokens and
    attends over the padding), cut to its real tokens ([1, T_i, C]): a region's embedding never depends on the
    other regions (the official code pads each region on its own, too).

    T5-only conditioning (FLUX.1): texts whose padded token lists are equally long (every prompt under 256 tokens)
    go through T5 as rows of ONE batch; rows never see each other, so each equals its own encode, and on a CPU most
    of an encode's time is ComfyUI casting the 4.7 G T5 weights, which a batch pays once.
    """
    tokenized = [clip.tokenize(text) for text in texts]
    n_t5_real = [_t5_length(clip.tokenize(text, tokenizer_options=NO_T5_PADDING)) for text in texts]
    t5_encoded = _encodes_t5(clip)
    out: list[torch.Tensor | None] = [None] * len(texts)
    groups: dict[int, list[int]] = {}
    padded = [keeps_padding(tokens) for tokens in tokenized]
    for i, tokens in enumerate(tokenized):
        sections = tokens.get("t5xxl")
        if t5_encoded and sections is not None and len(sections) == 1 and not padded[i]:
            groups.setdefault(len(sections[0]), []).append(i)
    for length, members in groups.items():
        if len(members) < 2:
            continue
        batch = dict(tokenized[members[0]])
        batch["t5xxl"] = [tokenized[i]["t5xxl"][0] for i in members]
        cond = clip.encode_from_tokens(batch)
        if cond.shape[1] != length * len(members):  # not T5 alone: encode these one by one below
            continue
        for row, i in enumerate(members):
            out[i] = cond[:, row * length : row * length + n_t5_real[i]]
    for i, tokens in enumerate(tokenized):
        if out[i] is None:
            cond = clip.encode_from_tokens(tokens)
            keep = None if padded[i] else real_token_positions(tokens, n_t5_real[i], cond.shape[1], t5_encoded)
            out[i] = cond if keep is None else cond[:, keep.to(cond.device)]
    return out


def encode_regions(clip, layout: RegionLayout) -> RegionalConditioning:
    """Every region with a prompt and a non-empty mask (others are skipped with a warning), plus the background
    prompt when the masks leave pixels uncovered."""
    import logging

    kept = []
    for i, region in enumerate(layout.regions):
        label = region.name or f"region {i + 1}"
        if not region.prompt.strip():
            logging.warning("Regional Prompt Encode: %s has no prompt; skipped", label)
        elif not bool((region.mask > 0).any()):
            logging.warning("Regional Prompt Encode: %s has an empty mask; skipped", label)
        else:
            kept.append(region)
    masks = layout.masks()
    uncovered = masks.shape[0] == 0 or bool((masks.max(0).values < 0.999).any())
    texts = [r.prompt for r in kept]
    if layout.background_prompt.strip() and uncovered:
        texts.append(layout.background_prompt)
    embeds = encode_texts(clip, texts) if texts else []
    background = embeds.pop() if len(embeds) > len(kept) else None
    if not embeds and background is None:
        raise ValueError(
            "no region has both a prompt and a non-empty mask: give at least one region a mask and "
            "a prompt (or a background prompt)"
        )
    return RegionalConditioning(layout.with_regions(tuple(kept)), tuple(embeds), background)
