"""The reference trajectory z_bar(sigma) for backward guidance, and its alignment to a sampler's sigmas.

Latents are in the model's sampling space (after process_latent_in, k-diffusion scaling x = x0 + sigma * eps),
the space a sampler function sees. Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Trajectory:
    sigmas: torch.Tensor  # [T] float32, strictly ascending (sigmas[0] may be 0: the clean latent)
    latents: torch.Tensor  # [T, B, C, H, W] float32, model space, latents[i] at sigmas[i]
    model_kind: str  # e.g. "SDXL/SDXL": the model class and latent format it was made with
    method: str  # "inversion" or "forward_noise"

    def __post_init__(self) -> None:
        if self.sigmas.ndim != 1 or self.latents.shape[0] != self.sigmas.shape[0]:
            raise ValueError(f"trajectory has {tuple(self.sigmas.shape)} sigmas for {self.latents.shape[0]} latents")
        if self.sigmas.numel() > 1 and not bool((self.sigmas[1:] > self.sigmas[:-1]).all()):
            raise ValueError("trajectory sigmas must be strictly ascending")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def at(self, sigma: float) -> torch.Tensor:
        """z_bar at sigma: the stored latent where sigma is on the grid, else the linear interpolation in sigma
        between its neighbours. That is DDIM-consistent: between grid points a DDIM path is x0 + sigma * eps with
        x0 and eps fixed, i.e. linear in sigma. Above the last point it raises."""
        return interpolate(self.sigmas, self.latents, sigma)


def interpolate(sigmas: torch.Tensor, latents: torch.Tensor, sigma: float) -> torch.Tensor:
    top = float(sigmas[-1])
    if sigma > top * (1 + 1e-4) + 1e-6:
        raise ValueError(f"sigma {sigma:.4g} is above the trajectory's last sigma {top:.4g}")
    if sigma >= top:
        return latents[-1]
    hi = int(torch.searchsorted(sigmas, torch.tensor(float(sigma), dtype=sigmas.dtype), right=False))
    if hi == 0:
        return latents[0]
    s_lo, s_hi = float(sigmas[hi - 1]), float(sigmas[hi])
    if abs(s_hi - sigma) <= 1e-6 * max(1.0, s_hi):
        return latents[hi]
    w = (sigma - s_lo) / (s_hi - s_lo)
    return torch.lerp(latents[hi - 1], latents[hi], w)


def forward_noise(x0: torch.Tensor, sigmas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z_bar(sigma) = x0 + sigma * eps for every sigma, with one fixed eps (no model evaluations).
    [T] sigmas, [B, C, H, W] x0 and noise -> [T, B, C, H, W]."""
    return x0.unsqueeze(0) + sigmas.to(x0).view(-1, *([1] * x0.ndim)) * noise.unsqueeze(0)


def guided_steps(total_steps: int, fraction: float) -> int:
    """How many of a sampler's steps are guided: ceil(fraction * steps)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    # the epsilon keeps 0.1 * 30 (= 3.0000000000000004 in floats) at 3
    return min(math.ceil(fraction * total_steps - 1e-9), total_steps)
