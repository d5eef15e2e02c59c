"""LSReGen on ComfyUI's real sampling machinery, in-process, with the tiny SD1.5 (+ GLIGEN) model.

The guided sampler is model-agnostic (it works on the sampler's x in model space), so its mechanics are tested
on the cheap SD1.5 UNet at 64x64; the SDXL pipeline runs through the real server in test_lsregen_server.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from regional_layout.guidance import comfy_inversion as I
from regional_layout.guidance import comfy_sampling as S
from regional_layout.guidance.backward import GuidanceSettings
from regional_layout.guidance.trajectory import Trajectory
from regional_layout.layout.boxes import parse_boxes
from support import graphs

SEED = 7
LATENT = (1, 4, 8, 8)  # 64x64 px


@pytest.fixture(scope="module")
def sd15(tiny_models):
    import comfy.sd

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(tiny_models / "checkpoints" / graphs.SD15), output_vae=True, output_clip=True,
        embedding_directory=None)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red car on a road"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return model, clip, vae, positive, negative


@pytest.fixture(scope="module")
def gligen(tiny_models):
    import comfy.sd

    return comfy.sd.load_gligen(str(tiny_models / "gligen" / graphs.GLIGEN))


def empty_latent() -> dict:
    return {"samples": torch.zeros(LATENT)}


def reference_trajectory(model, positive, steps: int, fraction: float):
    ref = {"samples": torch.randn(LATENT, generator=torch.Generator().manual_seed(11)) * 4}
    trajectory, _ = I.invert(model, positive, ref, steps, "normal", fraction, steps, "forward_noise", 3)
    return trajectory


def ksampler_node(model, positive, negative, sampler_name, steps=3, scheduler="normal"):
    """ComfyUI's KSampler node, line for line (nodes.common_ksampler; the module `nodes` itself is shadowed by
    this pack's nodes/ package in tests; the server test compares with the real node)."""
    import comfy.sample

    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros(LATENT))
    noise = comfy.sample.prepare_noise(latent, SEED, None)
    return comfy.sample.sample(model, noise, steps, 4.0, sampler_name, scheduler, positive, negative, latent,
                               denoise=1.0, seed=SEED)


def guided(model, positive, negative, sampler_name, plan, steps=3, scheduler="normal"):
    return S.sample(model, SEED, steps, 4.0, sampler_name, scheduler, positive, negative, empty_latent(),
                    plan=plan)["samples"]


@pytest.mark.parametrize("sampler_name, gamma, fraction", [("euler", 0.0, 0.5), ("dpmpp_2m", 0.3, 0.0),
                                                            ("euler_ancestral", 0.0, 1.0)])
def test_gamma_zero_or_fraction_zero_equal_ksampler(sd15, sampler_name, gamma, fraction):
    import comfy.sample
    import comfy.samplers

    model, _, _, positive, negative = sd15
    steps = 2
    trajectory = reference_trajectory(model, positive, steps, 1.0)
    expected = ksampler_node(model, positive, negative, sampler_name, steps)
    plan = S.GuidancePlan(trajectory, GuidanceSettings(gamma), fraction)
    assert torch.equal(guided(model, positive, negative, sampler_name, plan, steps), expected)
    assert plan.log == []
    # The guided sampler object itself, hooked into every step with gamma 0, changes nothing either
    # (for samplers in S.GUIDED_SAMPLERS; the others run their guided head as Euler).
    plan = S.GuidancePlan(trajectory, GuidanceSettings(0.0), 1.0)
    sigmas = S.ksampler_sigmas(model, steps, sampler_name, "normal", 1.0)
    noise = comfy.sample.prepare_noise(torch.zeros(LATENT), SEED)
    out = comfy.samplers.sample(model, noise, positive, negative, 4.0, model.load_device,
                                S.guided_sampler(sampler_name, plan), sigmas, model_options=model.model_options,
                                latent_image=torch.zeros(LATENT), seed=SEED)
    assert torch.equal(out, expected)
    assert [g.step for g in plan.log] == [0, 1]


@pytest.mark.parametrize("sampler_name, fraction, steps", [("euler", 0.3, 4), ("dpmpp_2m", 0.5, 3),
                                                            ("heun", 0.5, 2)])
def test_guidance_is_applied_in_exactly_the_first_steps_and_lowers_d(sd15, sampler_name, fraction, steps):
    model, _, _, positive, negative = sd15
    trajectory = reference_trajectory(model, positive, steps, fraction)
    ratios = []
    for gamma in (0.1, 0.3):
        plan = S.GuidancePlan(trajectory, GuidanceSettings(gamma), fraction)
        guided(model, positive, negative, sampler_name, plan, steps)
        assert [g.step for g in plan.log] == list(range(math.ceil(fraction * steps)))
        assert all(g.on_state for g in plan.log), "the guided tensor must be the sampler's own state"
        assert all(g.distance_after < g.distance_before for g in plan.log)
        ratios.append([g.distance_after / g.distance_before for g in plan.log])
        for g in plan.log:  # identity + squared L2: D shrinks by exactly (1 - 2 gamma)^2
            assert g.distance_after / g.distance_before == pytest.approx((1 - 2 * gamma) ** 2, rel=1e-3)
    assert all(hi < lo for lo, hi in zip(*ratios)), "a larger gamma lowers D more"


@pytest.mark.parametrize("sampler_name", ["euler_ancestral", "dpmpp_2m"])
def test_guidance_changes_only_the_guided_state(sd15, sampler_name):
    """gamma 0.5 on step 0 only snaps x to z_bar(sigma_0); everything after (multistep history, the ancestral
    noise stream) is the sampler's own. So it equals plain sampling started from z_bar(sigma_0) without noise."""
    import comfy.sample

    model, _, _, positive, negative = sd15
    steps = 3
    trajectory = reference_trajectory(model, positive, steps, 0.3)
    plan = S.GuidancePlan(trajectory, GuidanceSettings(0.5), 0.3)
    out = guided(model, positive, negative, sampler_name, plan, steps)
    assert [g.step for g in plan.log] == [0]
    sigmas = S.ksampler_sigmas(model, steps, sampler_name, "normal", 1.0)
    start = model.model.process_latent_out(trajectory.at(float(sigmas[0])).clone())
    expected = comfy.sample.sample(model, torch.zeros(LATENT), steps, 4.0, sampler_name, "normal", positive,
                                   negative, start, seed=SEED)
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)  # process_latent_in/out round-off
    plain = ksampler_node(model, positive, negative, sampler_name, steps)
    assert (out - plain).abs().max() > 1e-2


def test_guided_sampling_is_deterministic(sd15):
    model, _, _, positive, negative = sd15
    trajectory = reference_trajectory(model, positive, 3, 0.5)
    runs = [guided(model, positive, negative, "euler_ancestral",
                   S.GuidancePlan(trajectory, GuidanceSettings(0.2, "lowpass", "cosine"), 0.5), 2)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_start_from_trajectory_equals_ksampler_advanced_without_noise(sd15):
    """start_from_trajectory: sampling begins at z_bar(sigma_0), the inversion's final latent, with no fresh
    noise: exactly what KSamplerAdvanced (add_noise disabled) gives from that latent, whatever the seed for a
    deterministic sampler; an ancestral sampler still draws its noise from the seed."""
    import comfy.sample

    model, _, _, positive, negative = sd15
    steps = 3
    ref = {"samples": torch.randn(LATENT, generator=torch.Generator().manual_seed(5))}
    trajectory, noisy = I.invert(model, positive, ref, steps, "normal", 0.5, 2, "inversion", 0)

    def run(sampler_name, seed, gamma=0.0, start=True):
        plan = S.GuidancePlan(trajectory, GuidanceSettings(gamma), 0.5, start_from_trajectory=start)
        return S.sample(model, seed, steps, 4.0, sampler_name, "normal", positive, negative, empty_latent(),
                        plan=plan)["samples"]

    without_noise = comfy.sample.sample(model, torch.zeros(LATENT), steps, 4.0, "euler", "normal", positive,
                                        negative, noisy["samples"], denoise=1.0, disable_noise=True, seed=SEED)
    assert torch.equal(run("euler", SEED), without_noise)
    assert torch.equal(run("euler", SEED + 1), without_noise)
    assert not torch.equal(run("euler", SEED, start=False), without_noise)
    assert not torch.equal(run("euler", SEED, gamma=0.3), without_noise)  # guidance still acts on top
    assert not torch.equal(run("euler_ancestral", SEED), run("euler_ancestral", SEED + 1))


def test_inversion_round_trip(sd15):
    """Invert with Euler (+2 fixed-point refinements) up to sigma 0.5, sample back with Euler at cfg 1: the
    input comes back within 5 % (relative L2; 2.1 % measured) on the random tiny model, though inversion moved it
    by > 50 %. (Plain DDIM inversion without refinement misses by ~40 % on this random model.)"""
    import comfy.samplers

    model, _, _, positive, _ = sd15
    ref = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))
    model_sampling = model.get_model_object("model_sampling")
    grid = torch.linspace(float(model_sampling.sigma_min), 0.5, 5)
    states: list[torch.Tensor] = []
    inversion = I.inversion_sampler(states, refine=2)
    noisy = comfy.samplers.sample(model, torch.zeros(LATENT), positive, positive, 1.0, model.load_device, inversion,
                                  grid, model_options=model.model_options, latent_image=ref, seed=0)
    back = comfy.samplers.sample(model, torch.zeros(LATENT), positive, positive, 1.0, model.load_device,
                                 comfy.samplers.sampler_object("euler"), grid.flip(0),
                                 model_options=model.model_options, latent_image=noisy, seed=0)
    assert states[0].shape == (5, *LATENT)
    assert (noisy - ref).norm() / ref.norm() > 0.5
    assert (back - ref).norm() / ref.norm() < 0.05


def test_inversion_trajectory_holds_the_guided_sigmas(sd15):
    model, _, _, positive, _ = sd15
    ref = {"samples": torch.randn(LATENT, generator=torch.Generator().manual_seed(3))}
    trajectory, noisy = I.invert(model, positive, ref, 10, "normal", 0.2, 2, "inversion", 0)
    sigmas = S.ksampler_sigmas(model, 10, "euler", "normal", 1.0)
    for s in sigmas[:2].tolist():  # exact grid points, not interpolated
        assert any(math.isclose(s, g, rel_tol=1e-6) for g in trajectory.sigmas.tolist())
    assert trajectory.sigma_max == pytest.approx(float(sigmas[0]))
    assert torch.equal(trajectory.latents[0], model.model.process_latent_in(ref["samples"]))
    torch.testing.assert_close(noisy["samples"], model.model.process_latent_out(trajectory.latents[-1].clone()))


def test_inversion_keeps_no_autograd_graph_outside_inference_mode(sd15):
    """ComfyUI's loaded weights require grad; a caller outside torch.inference_mode (a script, another pack) must
    not get a graph holding every layer's activations (the full-size SDXL grew by 11 GB over two steps)."""
    model, _, _, positive, _ = sd15
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert any(p.requires_grad for p in model.model.parameters()), "the premise: ComfyUI's weights require grad"
    ref = {"samples": torch.randn(LATENT, generator=torch.Generator().manual_seed(3))}
    trajectory, noisy = I.invert(model, positive, ref, 10, "normal", 0.2, 2, "inversion", 0)
    assert trajectory.latents.grad_fn is None and not trajectory.latents.requires_grad
    assert not noisy["samples"].requires_grad


def test_gligen_boxes_reach_the_model(sd15, gligen):
    from regional_layout.guidance.comfy_gligen import sample_prior

    model, clip, vae, positive, negative = sd15

    def prior(boxes):
        return sample_prior(model, clip, vae, gligen, parse_boxes(boxes), "a street", "", SEED, 2, 4.0, "euler",
                            "normal", 64, 64)[1]["samples"]

    plain = S.sample(model, SEED, 2, 4.0, "euler", "normal", clip.encode_from_tokens_scheduled(
        clip.tokenize("a street")), negative, empty_latent())["samples"]
    left = prior("0 0 0.5 1: a red car")
    moved = prior("0.5 0 0.5 1: a red car")
    assert (left - plain).abs().max() > 1e-4, "boxes must change the prior"
    assert (left - moved).abs().max() > 1e-4, "moving a box must change the prior"


def test_gligen_prior_rejects_wrong_models(sd15, gligen, tiny_models):
    import comfy.gligen
    import comfy.model_patcher
    import comfy.utils
    from regional_layout.guidance.comfy_gligen import check_gligen_matches, check_sd1_model

    model = sd15[0]
    check_sd1_model(model)
    check_gligen_matches(model, gligen)
    sd = comfy.utils.load_torch_file(str(tiny_models / "gligen" / graphs.GLIGEN))
    fewer = {k: v for k, v in sd.items() if not k.startswith("output_blocks.")}
    with pytest.raises(ValueError, match="gligen: .*do not fit"):
        check_gligen_matches(model, comfy.model_patcher.ModelPatcher(comfy.gligen.load_gligen(fewer), "cpu", "cpu"))


def test_trajectory_must_match_the_latent(sd15):
    model, _, _, positive, negative = sd15
    trajectory = reference_trajectory(model, positive, 3, 1.0)
    plan = S.GuidancePlan(trajectory, GuidanceSettings(0.2), 1.0)
    with pytest.raises(ValueError, match="trajectory: it holds latents of shape"):
        S.sample(model, SEED, 3, 4.0, "euler", "normal", positive, negative, {"samples": torch.zeros(1, 4, 8, 16)},
                 plan=plan)
    low = Trajectory(trajectory.sigmas[:2], trajectory.latents[:2], trajectory.model_kind, "forward_noise")
    plan = S.GuidancePlan(low, GuidanceSettings(0.2), 1.0)
    with pytest.raises(ValueError, match="trajectory: it reaches sigma"):
        S.sample(model, SEED, 3, 4.0, "euler", "normal", positive, negative, empty_latent(), plan=plan)
    other = Trajectory(trajectory.sigmas, trajectory.latents, "SDXL/SDXL", "forward_noise")
    plan = S.GuidancePlan(other, GuidanceSettings(0.2), 1.0)
    with pytest.raises(ValueError, match="trajectory: it was made with a SDXL/SDXL model"):
        S.sample(model, SEED, 3, 4.0, "euler", "normal", positive, negative, empty_latent(), plan=plan)
