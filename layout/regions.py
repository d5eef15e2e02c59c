"""The region layout shared by both methods: per-region masks and prompts, with their boxes.

Regional FLUX reads the masks; the GLIGEN layout prior reads each region's bounding box and prompt.
Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_REGIONS = 256
# Regions x width x height, the float32 mask elements a layout holds: 2**29 is 2 GiB. A larger layout would only
# be brought down to the model's grid (1/16 of each side for FLUX) anyway, so refuse it before allocating it.
MAX_MASK_ELEMENTS = 2**29


def check_layout_size(width: int, height: int, count: int) -> None:
    if count * width * height > MAX_MASK_ELEMENTS:
        raise ValueError(
            f"{count} regions at {width}x{height} need {count * width * height * 4 / 2**30:.1f} GiB of "
            f"masks (at most {MAX_MASK_ELEMENTS * 4 / 2**30:.0f} GiB): use a smaller width/height for "
            "the layout (masks are resized to the model's grid anyway) or fewer regions"
        )


@dataclass(frozen=True, eq=False)
class Region:
    prompt: str
    mask: torch.Tensor  # [H, W] float32 in [0, 1], at the layout's pixel size
    name: str = ""
    color: str = ""  # "#rrggbb", for previews
    feather: float = 0.0  # pixels; softens the edge when the mask is brought to a model's grid

    def bbox(self) -> tuple[int, int, int, int] | None:
        """Pixel bounds (x0, y0, x1, y1), end-exclusive, of the mask's non-zero area; None when empty."""
        ys, xs = torch.nonzero(self.mask > 0, as_tuple=True)
        if ys.numel() == 0:
            return None
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass(frozen=True, eq=False)
class RegionLayout:
    width: int
    height: int
    regions: tuple[Region, ...] = field(default_factory=tuple)
    base_prompt: str = ""
    background_prompt: str = ""

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"layout size must be positive, got {self.width}x{self.height}")
        if len(self.regions) > MAX_REGIONS:
            raise ValueError(f"{len(self.regions)} regions; at most {MAX_REGIONS} are supported")
        for i, region in enumerate(self.regions):
            if tuple(region.mask.shape) != (self.height, self.width):
                raise ValueError(f"region {i} mask is {tuple(region.mask.shape)}, layout is {self.height}x{self.width}")

    def masks(self) -> torch.Tensor:
        """[R, H, W] float32 (R may be 0)."""
        if not self.regions:
            return torch.zeros(0, self.height, self.width)
        return torch.stack([r.mask.float() for r in self.regions])

    def prompts(self) -> list[str]:
        return [r.prompt for r in self.regions]

    def boxes(self) -> list[tuple[float, float, float, float] | None]:
        """Each region's bounding box as normalised (x, y, w, h), None for an empty mask."""
        out = []
        for region in self.regions:
            box = region.bbox()
            if box is None:
                out.append(None)
                continue
            x0, y0, x1, y1 = box
            out.append((x0 / self.width, y0 / self.height, (x1 - x0) / self.width, (y1 - y0) / self.height))
        return out

    def with_regions(self, regions: tuple[Region, ...]) -> "RegionLayout":
        return RegionLayout(self.width, self.height, tuple(regions), self.base_prompt, self.background_prompt)
