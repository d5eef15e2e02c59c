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
