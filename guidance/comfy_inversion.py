"""Host adapter: latent inversion on ComfyUI's sampling machinery. The Euler inversion of inversion.py runs as a
KSAMPLER, so the model wrapper, conditioning, previews and interrupts are ComfyUI's own."""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers

from .comfy_sampling import model_kind, progress
from .inversion import inversion_grid, invert_euler
from .trajectory import Trajectory, forward_noise, guided_steps


# no_grad as in k-diffusion's samplers: ComfyUI's weights require grad, so a caller outside inference mode would
# otherwise keep an autograd graph of every model evaluation.
@torch.no_grad()
def _sample_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None, *, lsregen_states,
                      lsregen_refine=0):
    def on_step(i, denoised, state):
        comfy.model_management.throw_exception_if_processing_interrupted()
        if callback is not None:
            callback({"x": state, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})

    denoise = lambda v, s: model(v, s, **(extra_args or {}))  # noqa: E731
    states = invert_euler(denoise, x, sigmas, on_step, lsregen_refine)
    lsregen_states.append(states.float().to(comfy.model_management.intermediate_device()))
    return states[-1]


def inversion_sampler(states: list[torch.Tensor], refine: int = 0) -> comfy.samplers.KSAMPLER:
    """A KSAMPLER that walks its latent UP the (ascending) sigmas and appends all its states to `states`."""
    return comfy.samplers.KSAMPLER(_sample_inversion, extra_options={"lsregen_states": states,
                                                                     "lsregen_refine": refine})


def invert(model, positive, latent: dict, steps: int, scheduler: str, fraction: float, inversion_steps: int,
           method: str, seed: int, refine: int = 0) -> tuple[Trajectory, dict]:
    """The reference trajectory for the first ceil(fraction * steps) sigmas of a `steps`-step `scheduler`
    schedule: DDIM inversion (Euler on ascending sigmas, cfg 1, coarse grid of `inversion_steps` plus the
    guided sigmas), or forward noising x0 + sigma * eps (no model evaluations)."""
    latent_image = latent["samples"]
    model_sampling = model.get_model_object("model_sampling")
    full = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)
    targets = full[:max(guided_steps(steps, fraction), 1)].float().cpu()
    kind = model_kind(model)
    if method == "forward_noise":
        x0 = model.model.process_latent_in(latent_image.float())
        sigmas = torch.cat([torch.zeros(1), targets.flip(0)])
        noise = comfy.sample.prepare_noise(x0, seed, latent.get("batch_index"))
        latents = forward_noise(x0, sigmas, noise)
        trajectory = Trajectory(sigmas, latents, kind, method)
    else:
        coarse = comfy.samplers.calculate_sigmas(model_sampling, scheduler, inversion_steps).float().cpu()
        grid = inversion_grid(targets, coarse, float(model_sampling.sigma_min))
        states: list[torch.Tensor] = []
        callback, disable_pbar = progress(model, len(grid) - 1)
        comfy.sample.sample_custom(model, torch.zeros_like(latent_image), 1.0, inversion_sampler(states, refine), grid,
                                   positive, positive, latent_image, callback=callback, disable_pbar=disable_pbar,
                                   seed=seed)
        trajectory = Trajectory(grid, states[0], kind, method)
    final = model.model.process_latent_out(trajectory.latents[-1].clone())
    return trajectory, {"samples": final.to(comfy.model_management.intermediate_device())}
