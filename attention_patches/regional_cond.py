"""The regional conditioning that flows from the prompt encoder to the FLUX patcher (the RL_REGIONAL_COND type)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout.regions import RegionLayout


@dataclass(frozen=True, eq=False)
class RegionalConditioning:
    """Each kept region's text embedding (real tokens only, [1, T_i, C]) next to its mask, and the background's.

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
        widths = {e.shape[-1] for e in self.embeds} | ({self.background.shape[-1]} if self.background is not None
                                                        else set())
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

# T5 tokenizer options that turn off ComfyUI's padding to 256 tokens (as its T5TokenizerOptions node does).
NO_T5_PADDING = {f"{name}_{option}": 0 for name in ("t5xxl",) for option in ("min_length", "min_padding")}
CLIP_CHUNK = 77
CLIP_END_TOKEN = 49407


def _token_id(pair) -> int | None:
    token = pair[0]
    return int(token) if isinstance(token, int) else None


def real_token_positions(tokens: dict, length: int) -> torch.Tensor | None:
    """Which of an encoder output's `length` positions hold real tokens, or None when all do.

    T5 arrives unpadded (NO_T5_PADDING); CLIP-L/G pad every 77-token chunk with end tokens, and as CLIP is causal
    the real positions before the padding do not depend on it, so they can be cut out exactly.
    """
    n_t5 = sum(len(chunk) for chunk in tokens.get("t5xxl", []))
    clip_chunks = tokens.get("l") or tokens.get("g") or []
    n_clip = CLIP_CHUNK * len(clip_chunks)
    if length == n_t5 or not clip_chunks or length not in (n_clip, n_clip + n_t5):
        return None
    last = [_token_id(p) for p in clip_chunks[-1]]
    end = last.index(CLIP_END_TOKEN, 1) + 1 if CLIP_END_TOKEN in last[1:] else len(last)
    keep = torch.arange(n_clip - CLIP_CHUNK + end)
    if length > n_clip:
        keep = torch.cat([keep, torch.arange(n_clip, length)])
    return keep


def _encode_tokens(clip, tokens: dict) -> torch.Tensor:
    """One tokenized text encoded, keeping only its real tokens: [1, T, C]."""
    cond = clip.encode_from_tokens(tokens)
    keep = real_token_positions(tokens, cond.shape[1])
    return cond if keep is None else cond[:, keep.to(cond.device)]


T5_PAD = 0


def encode_texts(clip, texts: list[str]) -> list[torch.Tensor]:
    """Each text's real-token embedding ([1, T_i, C]).

    When the conditioning is T5 alone (FLUX.1), the texts go through T5 in ONE batch, each padded to the longest:
    on a CPU most of an encode's time is ComfyUI casting the 4.7 G T5 weights, which a batch pays once. The padding
    is what the official code has too (it pads every regional prompt to 512 and uses no attention mask).
    """
    tokenized = [clip.tokenize(text, tokenizer_options=NO_T5_PADDING) for text in texts]
    sections = [tokens.get("t5xxl") for tokens in tokenized]
    if len(texts) > 1 and all(s is not None and len(s) == 1 and s[0] for s in sections):
        lengths = [len(s[0]) for s in sections]
        longest = max(lengths)
        pad = (T5_PAD, 1.0)
        batch = dict(tokenized[0])
        batch["t5xxl"] = [list(s[0]) + [pad] * (longest - len(s[0])) for s in sections]
        cond = clip.encode_from_tokens(batch)
        if cond.shape[1] == longest * len(texts):  # T5 only: one block of `longest` tokens per text
            return [cond[:, i * longest:i * longest + n] for i, n in enumerate(lengths)]
    return [_encode_tokens(clip, tokens) for tokens in tokenized]


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
        raise ValueError("no region has both a prompt and a non-empty mask: give at least one region a mask and "
                         "a prompt (or a background prompt)")
    return RegionalConditioning(layout.with_regions(tuple(kept)), tuple(embeds), background)
