"""Deterministic latent inversion: Euler steps on ascending sigmas, which is DDIM inversion (eta = 0).

The Euler step x' = x + (x - D(x, s)) / s * (s' - s) equals x' = D + s' * eps_hat with eps_hat = (x - D) / s:
the DDIM update in k-diffusion scaling, run from low noise to high. Plain torch: the denoiser is any callable
D(x, sigma) -> x0 estimate (a ComfyUI sampler passes its model wrapper).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def invert_euler(
    denoise: Denoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    refine: int = 0,
) -> torch.Tensor:
    """Walk x0 (taken to sit at sigmas[0] > 0) up the ascending sigmas. Returns [T, B, C, H, W]: the state at
    every sigma, states[0] = x0. on_step(i, denoised, x) runs after each step's first model evaluation.

    refine > 0 adds fixed-point iterations per step (one model evaluation each) that re-take the step with the
    derivative at its end, x' = x + d(x', s') (s' - s): then one Euler step back from x' lands on x exactly
    when they converge, so inversion followed by Euler sampling is a round trip."""
    if sigmas.numel() < 1 or float(sigmas[0]) <= 0:
        raise ValueError("inversion sigmas must start above 0 (start at the model's sigma_min)")
    if sigmas.numel() > 1 and not bool((sigmas[1:] > sigmas[:-1]).all()):
        raise ValueError("inversion sigmas must be strictly ascending")
    s_in = x0.new_ones([x0.shape[0]])
    x = x0
    states = [x0]
    for i in range(sigmas.numel() - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        if on_step is not None:
            on_step(i, denoised, x)
        step = sigmas[i + 1] - sigmas[i]
        x_next = x + (x - denoised) / sigmas[i] * step
        for _ in range(refine):
            x_next = x + (x_next - denoise(x_next, sigmas[i + 1] * s_in)) / sigmas[i + 1] * step
        x = x_next
        states.append(x)
    return torch.stack(states)


def inversion_grid(target_sigmas: torch.Tensor, schedule: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """Ascending sigmas for the inversion walk: sigma_min, then the (coarse) schedule's sigmas below the highest
    target, then every target sigma, so the trajectory holds the exact latents where guidance reads them."""
    targets = [s for s in target_sigmas.tolist() if s > sigma_min]
    top = max(targets, default=sigma_min)
    coarse = [s for s in schedule.tolist() if sigma_min < s < top and all(abs(s - t) > 1e-3 * t for t in targets)]
    return torch.tensor([sigma_min, *sorted(set(coarse + targets))], dtype=torch.float32)
