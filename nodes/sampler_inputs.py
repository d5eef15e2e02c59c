"""The KSampler inputs three nodes share (seed, steps, cfg, sampler_name, scheduler) and the guidance fraction
that Latent Inversion and the guided sampler must agree on: one definition each, so names and ranges cannot
drift apart. Each node passes its own tooltips (and defaults where they differ) and keeps its input order."""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

SEED_MAX = 0xffffffffffffffff


def seed_input(tooltip: str, control_after_generate: bool | None = True) -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=control_after_generate,
                        tooltip=tooltip)


def steps_input(tooltip: str, default: int = 30) -> io.Int.Input:
    return io.Int.Input("steps", default=default, min=1, max=10000, tooltip=tooltip)


def cfg_input(tooltip: str, default: float = 7.0) -> io.Float.Input:
    return io.Float.Input("cfg", default=default, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=tooltip)


def sampler_name_input(tooltip: str) -> io.Combo.Input:
    return io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler", tooltip=tooltip)


def scheduler_input(tooltip: str) -> io.Combo.Input:
    return io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal", tooltip=tooltip)


def ksampler_inputs(*, seed: str, steps: str, cfg: str, sampler_name: str, scheduler: str, steps_default: int = 30,
                    cfg_default: float = 7.0) -> list[io.Input]:
    """seed, steps, cfg, sampler_name, scheduler in KSampler's order; each keyword is that input's tooltip."""
    return [seed_input(seed), steps_input(steps, steps_default), cfg_input(cfg, cfg_default),
            sampler_name_input(sampler_name), scheduler_input(scheduler)]


def guidance_fraction_input(tooltip: str) -> io.Float.Input:
    return io.Float.Input("guidance_fraction", default=0.1, min=0.0, max=1.0, step=0.01, tooltip=tooltip)
