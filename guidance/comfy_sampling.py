"""Host adapter: LSReGen's backward guidance on ComfyUI's own sampling machinery. A KSAMPLER that wraps any
sampler with the guidance of backward.py, and `sample`, the KSampler-equivalent entry point the node calls.

How the guided sampler reaches x between steps without copying a sampler loop: the chosen sampler runs once
over all sigmas, on a thin wrapper of its denoiser. At the first model call of each guided step i (sigma ==
sigmas[i], before the sampler's callback for that step) the wrapper updates the sampler's own x in place,
z <- z - gamma * grad D. The sampler then continues with that x, so multistep history, ancestral noise and
progress callbacks are the sampler's own.

Only the samplers in GUIDED_SAMPLERS run that way: for each of them a test shows that every guided step's pull
is carried by the sampler's state. Every other sampler (also any a newer ComfyUI adds) runs its guided head as
Euler (DDIM) steps and then itself on the rest of the schedule. Each guided step is also checked while sampling
(it must be applied at its sigma, and the sampler's callback for it must see the guided tensor); a step that
fails the check restarts the run on that fallback.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from .backward import GuidanceSettings, distance, guidance_step
from .trajectory import Trajectory, guided_steps

# Samplers that carry every guided step's pull in their own state (tests/test_lsregen_samplers.py checks this for
# every name ComfyUI offers). lcm keeps no state between steps (each step is the model's prediction plus fresh
# noise), so the pull acts through the prediction of the guided latent, as in every sampler's model call.
GUIDED_SAMPLERS = frozenset({
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "ddim", "ddpm", "lcm", "lms", "dpm_2",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3",
})
# Why the others fall back (as of ComfyUI 0.3.76): uni_pc(_bh2), dpm_fast, dpm_adaptive evaluate the model off the
# schedule's sigmas; heun, heunpp2, dpm_2_ancestral, dpmpp_2s_ancestral(_cfg_pp) make a second call after the
# callback; ipndm(_v), deis report a stale x to the callback; sa_solver(_pece)'s corrector rebuilds x from the
# unguided state, so the pull of every guided step after the first is lost.


class TrajectoryMismatch(ValueError):
    """The trajectory does not fit this sampler's model, latent or schedule (the message names the fix)."""


class PullNotOnState(RuntimeError):
    """A guided step's pull did not land on the sampler's state (the run then restarts on the fallback)."""


@dataclass
class GuidedStep:
    step: int
    sigma: float
    distance_before: float
    distance_after: float
    on_state: bool = False  # the sampler's callback for this step saw the guided tensor


@dataclass
class GuidancePlan:
    trajectory: Trajectory
    settings: GuidanceSettings
    fraction: float
    mask: torch.Tensor | None = None  # (1 or B, 1, h, w) latent-resolution mask for the "masked" feature
    start_from_trajectory: bool = False  # begin at z_bar(sigma_0) instead of latent + sigma_0 * noise
    log: list[GuidedStep] = field(default_factory=list)
    fallback: str | None = None  # why the guided head ran as Euler steps (None: the chosen sampler guided itself)


def model_kind(model) -> str:
    return f"{type(model.model).__name__}/{type(model.model.latent_format).__name__}"


class _StepGuide:
    """Applies the guidance update at the first model call of each guided step and checks, at the sampler's
    callback, that it landed on the sampler's state (see module doc)."""

    def __init__(self, plan: GuidancePlan, sigmas: torch.Tensor, guided: int):
        self.plan, self.sigmas, self.guided = plan, sigmas, guided
        self.step, self.armed, self.pending = 0, True, None

    def before_model(self, x: torch.Tensor, sigma: torch.Tensor) -> None:
        if not self.armed or self.step >= self.guided:
            return
        target = float(self.sigmas[self.step])
        if not math.isclose(float(sigma.flatten()[0]), target, rel_tol=1e-5, abs_tol=1e-7):
            return
        ref = self.plan.trajectory.at(target).to(device=x.device, dtype=x.dtype)
        mask = None if self.plan.mask is None else self.plan.mask.to(x.device)
        before = distance(x, ref, self.plan.settings, mask)
        x.copy_(guidance_step(x, ref, self.plan.settings, mask))
        self.plan.log.append(GuidedStep(self.step, target, before, distance(x, ref, self.plan.settings, mask)))
        self.pending, self.armed = x, False

    def after_step(self, i: int, x: torch.Tensor) -> None:
        if i < self.guided:
            entry = self.plan.log[-1] if self.plan.log else None
            if entry is None or entry.step != i:
                raise PullNotOnState(f"guided step {i} made no model call at its sigma {float(self.sigmas[i]):.4g}")
            if x is not self.pending:
                raise PullNotOnState(f"the callback of guided step {i} reports another tensor than the guided one")
            entry.on_state = True
        self.pending, self.step, self.armed = None, i + 1, True

    def check_done(self) -> None:
        if [g.step for g in self.plan.log if g.on_state] != list(range(self.guided)):
            raise PullNotOnState(f"the sampler did not confirm all {self.guided} guided steps at its callback")


class _GuidedDenoiser:
    """The sampler's denoiser (KSamplerX0Inpaint), with the guide run before each call."""

    def __init__(self, model, guide: _StepGuide):
        self.model, self.guide = model, guide

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, sigma, **kwargs):
        self.guide.before_model(x, sigma)
        return self.model(x, sigma, **kwargs)


def _sample_guided(model, x, sigmas, extra_args=None, callback=None, disable=None, *, lsregen_inner,
                   lsregen_inner_name, lsregen_plan):
    inner: comfy.samplers.KSAMPLER = lsregen_inner
    plan: GuidancePlan = lsregen_plan
    if lsregen_inner_name in GUIDED_SAMPLERS:
        start = x.clone()  # the guide writes into x: keep the start for a fallback run
        try:
            return _run_guided(inner.sampler_function, model, x, sigmas, extra_args, callback, disable, plan,
                               guided_steps(len(sigmas) - 1, plan.fraction), **inner.extra_options)
        except PullNotOnState as err:
            plan.fallback = f"{lsregen_inner_name}: {err}"
            logging.warning("Backward guidance: %s; running the guided steps as Euler instead", plan.fallback)
            plan.log.clear()
            x = start
    else:
        plan.fallback = f"{lsregen_inner_name} is not in GUIDED_SAMPLERS"
    return _run_fallback(inner, model, x, sigmas, extra_args, callback, disable, plan)


def _run_guided(sampler_function, model, x, sigmas, extra_args, callback, disable, plan: GuidancePlan, guided: int,
                **options):
    guide = _StepGuide(plan, sigmas, guided)

    def step_callback(d):
        guide.after_step(d["i"], d["x"])
        if callback is not None:
            callback(d)

    out = sampler_function(_GuidedDenoiser(model, guide), x, sigmas, extra_args=extra_args, callback=step_callback,
                           disable=disable, **options)
    guide.check_done()
    return out


def _run_fallback(inner, model, x, sigmas, extra_args, callback, disable, plan: GuidancePlan):
    """The guided head as Euler (DDIM) steps, then the chosen sampler on the rest of the schedule."""
    total, head = len(sigmas) - 1, guided_steps(len(sigmas) - 1, plan.fraction)
    euler = comfy.samplers.ksampler("euler")
    x = _run_guided(euler.sampler_function, model, x, sigmas[:head + 1], extra_args, callback, disable, plan, head)
    if head >= total:
        return x

    def tail_callback(d):
        if callback is not None:
            callback({**d, "i": d["i"] + head})

    return inner.sampler_function(model, x, sigmas[head:], extra_args=extra_args, callback=tail_callback,
                                  disable=disable, **inner.extra_options)


def guided_sampler(sampler_name: str, plan: GuidancePlan) -> comfy.samplers.KSAMPLER:
    inner = comfy.samplers.sampler_object(sampler_name)
    options = {"lsregen_inner": inner, "lsregen_inner_name": sampler_name, "lsregen_plan": plan}
    return comfy.samplers.KSAMPLER(_sample_guided, extra_options=options, inpaint_options=inner.inpaint_options)


def check_trajectory(trajectory: Trajectory, model, latent: torch.Tensor, first_sigma: float) -> None:
    kind = model_kind(model)
    if trajectory.model_kind != kind:
        raise TrajectoryMismatch(f"trajectory: it was made with a {trajectory.model_kind} model, this sampler's model is "
                         f"{kind}: invert with the same model")
    shape, want = tuple(latent.shape), trajectory.latent_shape
    if shape[1:] != want[1:] or want[0] not in (1, shape[0]):
        raise TrajectoryMismatch(f"trajectory: it holds latents of shape {list(want)}, the latent here is {list(shape)}: "
                         "invert a latent of the same size (upscale the prior to this size first)")
    if first_sigma > trajectory.sigma_max * (1 + 1e-4) + 1e-6:
        raise TrajectoryMismatch(f"trajectory: it reaches sigma {trajectory.sigma_max:.4g} but the first guided step is at "
                         f"sigma {first_sigma:.4g}: invert with the same steps and scheduler and at least this "
                         "fraction")


def progress(model, steps: int):
    """KSampler's preview callback and progress-bar switch (as nodes.common_ksampler sets them)."""
    return latent_preview.prepare_callback(model, steps), not comfy.utils.PROGRESS_BAR_ENABLED


def ksampler_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    return comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                   scheduler=scheduler, denoise=denoise, model_options=model.model_options).sigmas


def sample(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
           latent: dict, denoise: float = 1.0, plan: GuidancePlan | None = None) -> dict:
    """nodes.common_ksampler with KSampler's sigmas handed to comfy.sample.sample_custom, so that a plan can swap
    in the guided sampler (and, with start_from_trajectory, the start latent). Without a plan, or with gamma 0 or
    fraction 0, this is exactly ComfyUI's KSampler."""
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    sigmas = ksampler_sigmas(model, steps, sampler_name, scheduler, denoise)
    sampler = comfy.samplers.sampler_object(sampler_name)
    if plan is not None and len(sigmas) > 1:
        check_trajectory(plan.trajectory, model, latent_image, float(sigmas[0]))
        if plan.settings.gamma > 0 and guided_steps(len(sigmas) - 1, plan.fraction) > 0:
            sampler = guided_sampler(sampler_name, plan)
        if plan.start_from_trajectory:  # x_0 = z_bar(sigma_0): no fresh noise (as KSamplerAdvanced without noise)
            start = plan.trajectory.at(float(sigmas[0])).expand_as(latent_image)
            latent_image = model.model.process_latent_out(start.clone()).to(latent_image)
            noise = torch.zeros_like(latent_image)
    callback, disable_pbar = progress(model, steps)
    samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                                         noise_mask=latent.get("noise_mask"), callback=callback,
                                         disable_pbar=disable_pbar, seed=seed)
    return {**latent, "samples": samples}
