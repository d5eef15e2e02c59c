"""Backward guidance (LSReGen, arXiv 2407.15066, Sec. 3): z <- z - gamma * grad_z D(feat(z), feat(z_ref)).

Features and distances are small pure functions in registries, so new ones plug in by name. Every distance
is a SUM over all elements (never a mean), so one gamma means the same at every resolution: with the identity
feature and squared L2 the step is the blend z <- (1 - 2 gamma) z + 2 gamma z_ref, whatever the latent size.
Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FeatureFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOWPASS_FACTOR = 4  # latent pixels per pooled cell: 1024 px / 8 / 4 = a 32x32 layout grid


def feature_identity(z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return z


def feature_lowpass(z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Average-pooled latent: keeps the low frequencies that carry the layout. (B, C, H/4, W/4), ceil mode."""
    return F.avg_pool2d(z, LOWPASS_FACTOR, ceil_mode=True, count_include_pad=False)


def feature_masked(z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The latent inside the layout's boxes only; mask is (1 or B, 1, H, W) in [0, 1] (all ones if None)."""
    return z if mask is None else z * mask.to(z)


def distance_squared_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).sum()


def distance_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().sum()


def distance_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of (1 - cosine similarity) of each sample's flattened feature."""
    return (1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)).sum()


FEATURES: dict[str, FeatureFn] = {
    "identity": feature_identity,
    "lowpass": feature_lowpass,
    "masked": feature_masked,
}
DISTANCES: dict[str, DistanceFn] = {
    "squared_l2": distance_squared_l2,
    "l1": distance_l1,
    "cosine": distance_cosine,
}


@dataclass(frozen=True)
class GuidanceSettings:
    gamma: float  # step size; >= 0
    feature: str = "identity"
    distance: str = "squared_l2"
    iterations: int = 1  # guidance updates per guided sampler step
    force_autograd: bool = False  # use autograd even where the closed form applies (for tests)

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.feature not in FEATURES:
            raise ValueError(f"unknown feature {self.feature!r}; choose one of {sorted(FEATURES)}")
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; choose one of {sorted(DISTANCES)}")

    @property
    def closed_form(self) -> bool:
        return self.feature == "identity" and self.distance == "squared_l2" and not self.force_autograd


def distance(z: torch.Tensor, ref: torch.Tensor, settings: GuidanceSettings, mask: torch.Tensor | None = None) -> float:
    feat = FEATURES[settings.feature]
    z, ref = z.detach().float(), ref.detach().float()
    return float(DISTANCES[settings.distance](feat(z, mask), feat(ref, mask)))


def gradient(
    z: torch.Tensor, ref: torch.Tensor, settings: GuidanceSettings, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """grad_z D(feat(z), feat(ref)), in float32. Autograd runs locally, so it also works inside ComfyUI's
    torch.inference_mode() (inference tensors are cloned into normal ones first)."""
    if settings.closed_form:
        return 2 * (z.float() - ref.float())
    feat, dist = FEATURES[settings.feature], DISTANCES[settings.distance]
    with torch.inference_mode(False), torch.enable_grad():
        zz = z.detach().float().clone().requires_grad_(True)
        target = feat(ref.detach().float().clone(), None if mask is None else mask.detach().float().clone())
        loss = dist(feat(zz, None if mask is None else mask.detach().float().clone()), target)
        (grad,) = torch.autograd.grad(loss, zz)
    return grad.detach().clone()


def guidance_step(
    z: torch.Tensor, ref: torch.Tensor, settings: GuidanceSettings, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Backward guidance at one sampler step: `iterations` times z <- z - gamma * grad D. Returns a new tensor
    in z's dtype; gamma = 0 returns z's values unchanged (bit for bit)."""
    if settings.gamma == 0:
        return z.clone()
    out = z.float()
    for _ in range(settings.iterations):
        out = out - settings.gamma * gradient(out, ref, settings, mask)
    return out.to(z.dtype)
