"""Backward guidance on every sampler ComfyUI's KSampler offers (comfy.samplers.KSampler.SAMPLERS, read from the
host, so a newer ComfyUI's samplers are covered too): each either carries the pull of every guided step in its
own state (guided), or runs its guided steps as Euler and then itself (fallback).

The model here is the tiny SD1.5 with its prediction replaced, through ComfyUI's APPLY_MODEL wrapper, by a fixed
latent that does not depend on x. Then the only way a guided step can change the result is through the sampler's
state (that is what sa_solver's corrector fails: it rebuilds x from the unguided state, so its guided steps after
the first change nothing), and no UNet runs, so 42 samplers take seconds. The schedule stops before sigma 0,
where most samplers return the prediction itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import comfy.samplers
import pytest
import torch
from regional_layout.guidance import comfy_sampling as S
from regional_layout.guidance.backward import GuidanceSettings
from regional_layout.guidance.trajectory import Trajectory
from support import graphs

LATENT = (1, 4, 8, 8)
STEPS = 4
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def flat_model(tiny_models):
    """(model whose prediction is a fixed latent, conditioning)."""
    import comfy.patcher_extension
    import comfy.sd

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
        str(tiny_models / "checkpoints" / graphs.SD15), output_vae=False, output_clip=True, embedding_directory=None)
    prediction = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    flat = model.clone()
    flat.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "flat_prediction",
                              lambda executor, x, t, *args, **kwargs: prediction.to(x).expand_as(x).clone())
    return flat, clip.encode_from_tokens_scheduled(clip.tokenize("a"))


def schedule(model, sampler_name: str) -> torch.Tensor:
    return S.ksampler_sigmas(model, STEPS + 1, sampler_name, "normal", 1.0)[:-1]  # STEPS steps, ending above 0


def trajectory(model, sigmas: torch.Tensor) -> Trajectory:
    grid = torch.cat([torch.zeros(1), sigmas.flip(0).float()])
    latents = torch.randn((len(grid), *LATENT), generator=torch.Generator().manual_seed(2)) * 3
    return Trajectory(grid, latents, S.model_kind(model), "forward_noise")


def run(model, positive, sampler, sigmas, noise_seed: int = 3) -> torch.Tensor:
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(noise_seed))
    return comfy.samplers.sample(model, noise, positive, positive, 4.0, model.load_device, sampler, sigmas,
                                 model_options=model.model_options, latent_image=torch.zeros(LATENT), seed=5)


def guided_runs(model, positive, sampler_name: str, sigmas) -> tuple[list[torch.Tensor], list[S.GuidancePlan]]:
    """The result with the first k steps guided, k = 0..STEPS-1 (gamma 0.3), and the plans of k >= 1."""
    reference = trajectory(model, sigmas)
    outs, plans = [run(model, positive, comfy.samplers.sampler_object(sampler_name), sigmas)], []
    for k in range(1, STEPS):
        plan = S.GuidancePlan(reference, GuidanceSettings(0.3), k / STEPS)
        outs.append(run(model, positive, S.guided_sampler(sampler_name, plan), sigmas))
        plans.append(plan)
    return outs, plans


def forgets_its_start(model, positive, sampler_name: str, sigmas) -> bool:
    """The sampler keeps no state: from another start latent it gives the same result (lcm: prediction + noise)."""
    sampler = comfy.samplers.sampler_object(sampler_name)
    return torch.equal(run(model, positive, sampler, sigmas, 3), run(model, positive, sampler, sigmas, 4))


@pytest.mark.parametrize("sampler_name", comfy.samplers.KSampler.SAMPLERS)
def test_every_sampler_carries_every_guided_step_or_falls_back(flat_model, sampler_name):
    model, positive = flat_model
    sigmas = schedule(model, sampler_name)
    outs, plans = guided_runs(model, positive, sampler_name, sigmas)
    for k, plan in enumerate(plans, start=1):
        assert [g.step for g in plan.log] == list(range(k)) and all(g.on_state for g in plan.log)
        assert (plan.fallback is None) == (sampler_name in S.GUIDED_SAMPLERS), plan.fallback
    # Guiding one more step changes the result: that step's pull reached the state the sampler goes on with.
    changes = [float((outs[k + 1] - outs[k]).abs().max()) for k in range(STEPS - 1)]
    if sampler_name in S.GUIDED_SAMPLERS and forgets_its_start(model, positive, sampler_name, sigmas):
        assert sampler_name == "lcm", "a stateless guided sampler must be named in GUIDED_SAMPLERS' comment"
        return
    assert all(c > 1e-5 for c in changes), f"guiding step k changed the result by {changes}"


def test_sa_solver_corrector_drops_the_pull_so_it_falls_back(flat_model, monkeypatch):
    """Run inside sa_solver, the guided steps after the first change nothing (exactly), though the sampler's
    callback sees the guided tensor; so sa_solver is not in GUIDED_SAMPLERS."""
    model, positive = flat_model
    monkeypatch.setattr(S, "GUIDED_SAMPLERS", S.GUIDED_SAMPLERS | {"sa_solver", "sa_solver_pece"})
    for name in ("sa_solver", "sa_solver_pece"):
        outs, plans = guided_runs(model, positive, name, schedule(model, name))
        assert all(p.fallback is None and all(g.on_state for g in p.log) for p in plans)
        assert not torch.equal(outs[1], outs[0])
        assert torch.equal(outs[2], outs[1]) and torch.equal(outs[3], outs[2])


@pytest.mark.parametrize("sampler_name, reason", [("ipndm", "reports another tensor"),
                                                  ("dpm_fast", "made no model call at its sigma")])
def test_a_step_that_misses_the_state_restarts_on_the_fallback(flat_model, monkeypatch, sampler_name, reason):
    """The check at the sampler's callback acts: were ipndm (stale x at the callback) or dpm_fast (no model call at
    the schedule's sigma) listed as guided, the run restarts as the fallback and gives the fallback's result."""
    model, positive = flat_model
    sigmas = schedule(model, sampler_name)
    reference = trajectory(model, sigmas)
    fallback = S.GuidancePlan(reference, GuidanceSettings(0.3), 0.5)
    expected = run(model, positive, S.guided_sampler(sampler_name, fallback), sigmas)
    monkeypatch.setattr(S, "GUIDED_SAMPLERS", S.GUIDED_SAMPLERS | {sampler_name})
    plan = S.GuidancePlan(reference, GuidanceSettings(0.3), 0.5)
    assert torch.equal(run(model, positive, S.guided_sampler(sampler_name, plan), sigmas), expected)
    assert reason in plan.fallback
    assert [(g.step, g.on_state) for g in plan.log] == [(g.step, g.on_state) for g in fallback.log]


def readme_sampler_table() -> dict[str, str]:
    """{sampler: "guided" | "fallback"} from the README's LSReGen sampler table."""
    section = README.read_text().split("<!-- lsregen-samplers:start -->")[1].split("<!-- lsregen-samplers:end -->")[0]
    table = {}
    for row in section.splitlines():
        cells = row.split("|")
        if len(cells) > 3 and cells[2].strip() in ("guided", "fallback"):
            table.update(dict.fromkeys(re.findall(r"`([a-z0-9_]+)`", cells[1]), cells[2].strip()))
    return table


def test_readme_sampler_table_says_what_the_code_does():
    table = readme_sampler_table()
    assert S.GUIDED_SAMPLERS <= set(table)
    for name in comfy.samplers.KSampler.SAMPLERS:  # a newer host's samplers: unlisted ones are fallbacks
        assert table.get(name, "fallback") == ("guided" if name in S.GUIDED_SAMPLERS else "fallback"), name
