"""LSReGen maths, pure torch: the backward-guidance step, trajectory alignment, inversion and the box mapping."""

from __future__ import annotations

import pytest
import torch
from regional_layout.guidance.backward import DISTANCES, FEATURES, GuidanceSettings, distance, gradient, guidance_step
from regional_layout.guidance.inversion import inversion_grid, invert_euler
from regional_layout.guidance.trajectory import Trajectory, forward_noise, guided_steps, interpolate
from regional_layout.layout.boxes import box_mask, boxes_from_layout, check_boxes, gligen_position, parse_boxes

pytestmark = pytest.mark.pure


def latents(seed: int, shape=(1, 4, 16, 24)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_gamma_zero_is_bit_identical():
    z, ref = latents(0), latents(1)
    for feature in FEATURES:
        for dist in DISTANCES:
            out = guidance_step(z, ref, GuidanceSettings(0.0, feature, dist, iterations=3))
            assert torch.equal(out, z) and out is not z


def test_identity_l2_step_is_the_blend_toward_the_reference():
    z, ref = latents(0), latents(1)
    for gamma in (0.05, 0.2, 0.5):
        out = guidance_step(z, ref, GuidanceSettings(gamma))
        torch.testing.assert_close(out, (1 - 2 * gamma) * z + 2 * gamma * ref)
    # k iterations: z_bar + (1 - 2 gamma)^k (z - z_bar)
    out = guidance_step(z, ref, GuidanceSettings(0.1, iterations=3))
    torch.testing.assert_close(out, ref + 0.8 ** 3 * (z - ref))


def test_pull_is_monotone_in_gamma_and_per_iteration():
    z, ref = latents(0), latents(1)
    settings = GuidanceSettings(0.0)
    base = distance(z, ref, settings)
    after = [distance(guidance_step(z, ref, GuidanceSettings(g)), ref, settings) for g in (0.05, 0.1, 0.2, 0.4, 0.5)]
    assert base > after[0] and all(a > b for a, b in zip(after, after[1:]))
    assert after[-1] < 1e-6 * base  # gamma 0.5 snaps onto the reference
    by_iterations = [distance(guidance_step(z, ref, GuidanceSettings(0.1, iterations=k)), ref, settings)
                     for k in (1, 2, 4)]
    assert all(a > b for a, b in zip(by_iterations, by_iterations[1:]))


@pytest.mark.parametrize("feature, dist", [("lowpass", "squared_l2"), ("identity", "l1"), ("lowpass", "cosine"),
                                           ("masked", "squared_l2")])
def test_every_feature_and_distance_lowers_d(feature, dist):
    z, ref = latents(0), latents(1)
    mask = torch.zeros(1, 1, 16, 24)
    mask[..., 4:12, 6:18] = 1
    settings = GuidanceSettings(0.01 if dist != "cosine" else 20.0, feature, dist)
    before = distance(z, ref, settings, mask)
    assert distance(guidance_step(z, ref, settings, mask), ref, settings, mask) < before


def test_closed_form_equals_autograd():
    z, ref = latents(0), latents(1)
    closed = GuidanceSettings(0.15, iterations=2)
    auto = GuidanceSettings(0.15, iterations=2, force_autograd=True)
    assert closed.closed_form and not auto.closed_form
    torch.testing.assert_close(gradient(z, ref, closed), gradient(z, ref, auto))
    torch.testing.assert_close(guidance_step(z, ref, closed), guidance_step(z, ref, auto))


def test_autograd_works_under_inference_mode():
    """ComfyUI runs every node under torch.inference_mode(); autograd guidance must still work there."""
    settings = GuidanceSettings(0.1, "lowpass", "squared_l2")
    expected = guidance_step(latents(0), latents(1), settings)
    with torch.inference_mode():
        z, ref = latents(0), latents(1)
        out = guidance_step(z, ref, settings)
    torch.testing.assert_close(out, expected)


def test_masked_feature_leaves_outside_untouched():
    z, ref = latents(0), latents(1)
    mask = torch.zeros(1, 1, 16, 24)
    mask[..., 4:12, 6:18] = 1
    out = guidance_step(z, ref, GuidanceSettings(0.25, "masked", "squared_l2"), mask)
    outside = mask.expand_as(z) == 0
    assert torch.equal(out[outside], z[outside])
    torch.testing.assert_close(out[~outside], (0.5 * z + 0.5 * ref)[~outside])


def test_masked_feature_keeps_the_layouts_boxes():
    """The masked feature keeps the boxes the GLIGEN prior drew (each region's mask bounding box), not the painted
    shapes: a disc keeps its whole bounding square; a box's partly covered latent cells get their covered share."""
    from regional_layout.layout.regions import Region, RegionLayout

    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(192.0), indexing="ij")
    disc = ((yy - 48) ** 2 + (xx - 64) ** 2 <= 32 ** 2).float()  # pixels x 32..96, y 16..80 inclusive
    layout = RegionLayout(192, 128, (Region("a disc", disc), Region("", torch.ones(128, 192))))
    boxes = boxes_from_layout(layout)
    assert [phrase for phrase, _ in boxes] == ["a disc"]  # a region without a prompt has no box
    mask = box_mask(boxes, 16, 24)  # the latent of 128 x 192 px: 8 px per cell
    expected = torch.zeros(16, 24)
    expected[2:10, 4:12] = 1  # whole cells: rows 16..79 px, columns 32..95 px
    expected[10, 4:12] = expected[2:10, 12] = 1 / 8  # pixel row 80 / column 96: one eighth of a cell
    expected[10, 12] = 1 / 64
    assert torch.equal(mask, expected)
    partial = box_mask([("half a cell", (0.0, 0.0, 4 / 24, 0.5 / 16))], 16, 24)
    assert partial[0, :4].eq(0.5).all() and partial[1:].eq(0).all()


def test_guidance_is_deterministic():
    settings = GuidanceSettings(0.3, "lowpass", "cosine", iterations=2)
    a = guidance_step(latents(0), latents(1), settings)
    b = guidance_step(latents(0), latents(1), settings)
    assert torch.equal(a, b)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="gamma"):
        GuidanceSettings(-0.1)
    with pytest.raises(ValueError, match="feature"):
        GuidanceSettings(0.1, feature="edges")
    with pytest.raises(ValueError, match="distance"):
        GuidanceSettings(0.1, distance="kl")
    with pytest.raises(ValueError, match="fraction"):
        guided_steps(10, 1.5)


def test_guided_steps_is_the_ceiling():
    assert [guided_steps(30, f) for f in (0.0, 0.01, 0.1, 0.11, 0.5, 1.0)] == [0, 1, 3, 4, 15, 30]
    assert guided_steps(4, 0.3) == 2


def test_trajectory_alignment_is_exact_on_grid_and_linear_between():
    sigmas = torch.tensor([0.0, 1.0, 3.0, 7.0])
    x0, noise = latents(0), latents(1)
    lat = forward_noise(x0, sigmas, noise)
    traj = Trajectory(sigmas, lat, "X/Y", "forward_noise")
    for i, s in enumerate(sigmas.tolist()):
        assert torch.equal(traj.at(s), lat[i])
    # a forward-noised (or DDIM) path is x0 + sigma * eps: linear interpolation recovers it off the grid
    for s in (0.5, 2.2, 6.9):
        torch.testing.assert_close(traj.at(s), x0 + s * noise)
    with pytest.raises(ValueError, match="above"):
        interpolate(sigmas, lat, 7.5)


def test_forward_noise_matches_definition():
    sigmas = torch.tensor([0.0, 2.0])
    x0, noise = latents(0), latents(1)
    lat = forward_noise(x0, sigmas, noise)
    assert torch.equal(lat[0], x0)
    torch.testing.assert_close(lat[1], x0 + 2.0 * noise)


def linear_denoiser(a: float):
    """D(x, sigma) = x / (1 + a sigma^2): a smooth stand-in whose Euler inversion is close to invertible."""
    return lambda x, s: x / (1 + a * s.view(-1, 1, 1, 1) ** 2)


def test_inversion_round_trip_with_euler():
    """Invert with Euler up the sigmas, sample back down with Euler: the input comes back (fine grid)."""
    x0 = latents(0)
    sigmas = torch.linspace(0.03, 2.0, 200)
    states = invert_euler(linear_denoiser(0.5), x0, sigmas)
    assert states.shape == (200, *x0.shape) and torch.equal(states[0], x0)
    x = states[-1]
    denoise = linear_denoiser(0.5)
    down = sigmas.flip(0)
    for i in range(len(down) - 1):
        d = (x - denoise(x, down[i].view(1))) / down[i]
        x = x + d * (down[i + 1] - down[i])
    assert (x - x0).norm() / x0.norm() < 1e-2


def test_inversion_is_deterministic_and_checks_its_grid():
    x0 = latents(0)
    sigmas = torch.tensor([0.03, 0.5, 1.5])
    a = invert_euler(linear_denoiser(1.0), x0, sigmas)
    assert torch.equal(a, invert_euler(linear_denoiser(1.0), x0, sigmas))
    with pytest.raises(ValueError, match="above 0"):
        invert_euler(linear_denoiser(1.0), x0, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="ascending"):
        invert_euler(linear_denoiser(1.0), x0, torch.tensor([0.5, 0.1]))


def test_inversion_grid_holds_every_target_sigma():
    targets = torch.tensor([14.6, 10.0, 7.0])
    schedule = torch.tensor([14.6, 6.0, 3.0, 1.0, 0.0])
    grid = inversion_grid(targets, schedule, 0.03)
    assert grid.tolist() == pytest.approx([0.03, 1.0, 3.0, 6.0, 7.0, 10.0, 14.6])


def test_boxes_parse_check_and_map():
    boxes = parse_boxes("0.1 0.2 0.3 0.5: a red car\n# comment\n\n0, 0, 1, 1 | sky")
    assert boxes == [("a red car", (0.1, 0.2, 0.3, 0.5)), ("sky", (0.0, 0.0, 1.0, 1.0))]
    check_boxes(boxes, "boxes")
    # (h, w, y, x) in latent cells of a 512x512 prior (64x64 cells), edges rounded outward
    assert gligen_position((0.1, 0.2, 0.3, 0.5), 512, 512) == (33, 20, 12, 6)
    assert gligen_position((0.0, 0.0, 1.0, 1.0), 512, 384) == (48, 64, 0, 0)
    assert gligen_position((0.999, 0.999, 0.0005, 0.0005), 512, 512) == (1, 1, 63, 63)
    with pytest.raises(ValueError, match="outside"):
        check_boxes([("car", (0.8, 0.1, 0.3, 0.2))], "boxes")
    with pytest.raises(ValueError, match="no boxes"):
        check_boxes([], "regions/boxes")
    with pytest.raises(ValueError, match="at most 30"):
        check_boxes([("p", (0.0, 0.0, 0.1, 0.1))] * 31, "regions/boxes")
    with pytest.raises(ValueError, match="line 1"):
        parse_boxes("a car at the left")


def test_only_the_comfy_adapters_import_the_host():
    """guidance/'s pure maths never imports ComfyUI; the modules that do are named comfy_*.py."""
    import ast
    from pathlib import Path

    host = {"comfy", "comfy_api", "comfy_extras", "latent_preview", "folder_paths", "node_helpers", "nodes"}
    for path in (Path(__file__).resolve().parents[1] / "guidance").glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
        assert bool(imported & host) == path.name.startswith("comfy_"), (path.name, sorted(imported & host))
