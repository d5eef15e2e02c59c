"""Region masks on FLUX's token grid: the rules of attention_patches/token_masks.py, one test per rule.

Pictures are 64 x 64 pixels unless noted: latent 8 x 8, token grid 4 x 4, one token per 16 x 16 pixels. Masks are
given in pixels, so a token's coverage can be any multiple of 1/256 (7 of 16 columns: 0.4375).
"""

from __future__ import annotations

import math

import pytest
import torch
from regional_layout.attention_patches.token_masks import region_token_masks, token_coverage, token_grid

pytestmark = pytest.mark.pure

SIDE = 64


def rect(y0: int, y1: int, x0: int, x1: int, *, h: int = SIDE, w: int = SIDE, value: float = 1.0) -> torch.Tensor:
    """A [h, w] pixel mask with `value` in rows y0..y1 and columns x0..x1 (ends excluded)."""
    mask = torch.zeros(h, w)
    mask[y0:y1, x0:x1] = value
    return mask


def tokens_of(*masks: torch.Tensor, h: int = SIDE, w: int = SIDE, **options):
    """(token membership as [R, rows, cols] bool, the TokenMasks) of pixel masks."""
    tm = region_token_masks(torch.stack(masks), h // 8, w // 8, **options)
    return tm.hard.view(-1, *tm.grid), tm


def held(hard_row: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(t) for t in torch.nonzero(hard_row).tolist()}


def test_a_token_belongs_to_a_region_covering_at_least_half_of_it():
    half = rect(0, 16, 0, 24)  # token (0, 0) whole, token (0, 1) 8 of 16 columns
    under_half = rect(32, 48, 0, 23)  # token (2, 0) whole, token (2, 1) 7 of 16 columns
    coverage = token_coverage(torch.stack([half, under_half]), 8, 8)
    assert coverage[0, 0, 1] == 0.5 and coverage[1, 2, 1] == 0.4375
    hard, tm = tokens_of(half, under_half)
    assert held(hard[0]) == {(0, 0), (0, 1)}
    assert held(hard[1]) == {(2, 0)}
    assert tm.disjoint and not tm.soft


def test_two_halves_of_a_token_are_a_tie_and_the_first_region_takes_it():
    left = rect(0, 16, 0, 24)  # token (0, 1): its left half
    right = rect(0, 16, 24, 48)  # token (0, 1): its right half
    elsewhere = rect(48, 64, 48, 64)  # listed first, so "first" means first of the tied regions, not region 0
    hard, tm = tokens_of(elsewhere, left, right)
    assert held(hard[1]) == {(0, 0), (0, 1)}
    assert held(hard[2]) == {(0, 2)}
    assert tm.disjoint
    hard, _ = tokens_of(elsewhere, right, left)  # the order of the list decides
    assert held(hard[1]) == {(0, 1), (0, 2)}
    assert held(hard[2]) == {(0, 0)}


def test_regions_that_really_overlap_inside_a_token_both_hold_it():
    a = rect(0, 16, 0, 24)  # token (0, 0) whole, (0, 1) half
    b = rect(0, 16, 8, 32)  # token (0, 0) half, (0, 1) whole: the two share columns 8..24
    hard, tm = tokens_of(a, b)
    assert held(hard[0]) == held(hard[1]) == {(0, 0), (0, 1)}
    assert not tm.disjoint
    # Two halves of token (2, 0) that share a quarter of it: an overlap too (the second also holds (3, 0), so the
    # small-region fill cannot hide a lost token).
    hard, tm = tokens_of(rect(32, 48, 0, 8), rect(32, 64, 4, 12))
    assert held(hard[0]) == {(2, 0)}
    assert held(hard[1]) == {(2, 0), (3, 0)}
    same = rect(16, 32, 16, 48)  # two regions on exactly the same pixels: an overlap, not a tie
    hard, tm = tokens_of(same, same.clone())
    assert held(hard[0]) == held(hard[1]) == {(1, 1), (1, 2)}


def test_a_small_region_keeps_its_best_covered_token():
    small = rect(20, 26, 12, 22)  # under half of any token: 4 columns in token (1, 0), 6 in token (1, 1)
    other = rect(48, 64, 0, 64)
    hard, tm = tokens_of(small, other)
    assert held(hard[0]) == {(1, 1)}
    assert held(hard[1]) == {(3, c) for c in range(4)}
    assert tm.disjoint


def test_a_small_region_prefers_a_token_no_other_region_holds():
    big = rect(0, 16, 0, 16)  # token (0, 0)
    small = rect(4, 10, 6, 20)  # 10 columns inside token (0, 0), 4 in the free token (0, 1)
    hard, tm = tokens_of(big, small)
    assert held(hard[0]) == {(0, 0)}
    assert held(hard[1]) == {(0, 1)}
    assert tm.disjoint


def test_a_small_region_inside_another_shares_that_token_rather_than_take_one_it_does_not_touch():
    big = rect(0, 16, 0, 16)
    inside = rect(4, 10, 4, 10)
    hard, tm = tokens_of(big, inside)
    assert held(hard[1]) == {(0, 0)}
    assert not tm.disjoint


def test_a_region_without_pixels_keeps_an_empty_row():
    hard, tm = tokens_of(torch.zeros(SIDE, SIDE), rect(0, 32, 0, 64))
    assert not hard[0].any()
    assert held(hard[1]) == {(r, c) for r in range(2) for c in range(4)}
    assert tm.covered.sum() == 8


def test_odd_latents_are_padded_by_repeating_the_edge_like_flux():
    h, w = 88, 120  # latent 11 x 15, token grid 6 x 8
    assert token_grid(h // 8, w // 8) == (6, 8)
    bottom = rect(80, 88, 0, 120, h=h, w=w)  # the last latent row only
    right = rect(0, 88, 112, 120, h=h, w=w)  # the last latent column only
    inner = rect(72, 80, 0, 120, h=h, w=w)  # the latent row above the last
    coverage = token_coverage(torch.stack([bottom, right, inner]), h // 8, w // 8)
    assert coverage.shape == (4, 6, 8)
    assert torch.equal(coverage[0, 5], torch.ones(8))  # the padded row repeats the last one
    assert torch.equal(coverage[1, :, 7], torch.ones(6))
    assert torch.equal(coverage[2, 4], torch.full((8,), 0.5)) and not coverage[2, 5].any()
    hard, _ = tokens_of(bottom, inner, h=h, w=w)
    assert held(hard[0]) == {(5, c) for c in range(8)}
    assert held(hard[1]) == {(4, c) for c in range(8)}


def test_hard_edged_regions_weigh_by_membership_and_soft_ones_by_coverage():
    hard_edged = rect(0, 16, 0, 24)  # coverage 0.5 in token (0, 1)
    _, tm = tokens_of(hard_edged, rect(32, 48, 0, 23))
    assert not tm.soft
    assert torch.equal(tm.weights, tm.hard.float())  # 0.5 coverage weighs 1, 0.4375 weighs 0
    grey = rect(32, 64, 0, 32, value=0.6)  # a soft mask: values between 0 and 1
    faint = rect(0, 16, 32, 64, value=0.3)  # under half everywhere: keeps its best token by the fill
    hard, tm = tokens_of(grey, faint)
    assert tm.soft
    coverage = token_coverage(torch.stack([grey, faint]), 8, 8).flatten(1)[:2]
    torch.testing.assert_close(tm.weights, coverage, atol=1e-6, rtol=0)
    assert held(hard[0]) == {(r, c) for r in (2, 3) for c in (0, 1)}
    assert len(held(hard[1])) == 1


def test_a_feather_makes_a_hard_region_soft_with_sigma_half_the_feather():
    """A 16-pixel feather is a Gaussian of sigma 8 pixels: 1 latent pixel. Checked against a direct sum of the
    sampled, normalised kernel (radius 3 sigma) over the step, edges repeated."""
    left = rect(0, SIDE, 0, 32)
    coverage = token_coverage(left[None], 8, 8, feathers=[16.0])[0]
    radius, sigma = 3, 1.0
    kernel = [math.exp(-0.5 * (t / sigma) ** 2) for t in range(-radius, radius + 1)]
    step = lambda col: 1.0 if min(max(col, 0), 7) < 4 else 0.0  # noqa: E731  latent columns 0..3 are inside
    latent = [sum(k * step(col + t) for k, t in zip(kernel, range(-radius, radius + 1))) / sum(kernel)
              for col in range(8)]
    expected = torch.tensor([(latent[2 * c] + latent[2 * c + 1]) / 2 for c in range(4)])
    torch.testing.assert_close(coverage[0], expected, atol=1e-6, rtol=0)
    assert torch.equal(coverage[0], coverage[3])  # rows: the edge is vertical
    hard, tm = tokens_of(left, rect(0, 16, 48, 64), feathers=[16.0, 0.0])
    assert tm.soft
    assert ((tm.weights[0] > 0) & (tm.weights[0] < 1)).any()
    assert set(tm.weights[1].tolist()) == {0.0, 1.0}  # the unfeathered region stays hard
    unfeathered, tm = tokens_of(left, rect(0, 16, 48, 64), feathers=[0.0, 0.0])
    assert not tm.soft


def test_the_background_row_holds_the_free_tokens():
    top = rect(0, 32, 0, 64)
    hard, tm = tokens_of(top, background=True)
    assert hard.shape[0] == 2
    assert held(hard[1]) == {(r, c) for r in (2, 3) for c in range(4)}
    assert torch.equal(tm.weights[1], hard[1].flatten().float())
    assert tm.disjoint
    hard, tm = tokens_of(rect(0, SIDE, 0, SIDE), background=True)
    assert hard.shape[0] == 1  # nothing is free: no background row


def test_a_soft_background_weighs_what_the_regions_leave():
    top = rect(0, 32, 0, 64)
    _, tm = tokens_of(top, feathers=[16.0], background=True)
    assert tm.soft and tm.hard.shape[0] == 2
    torch.testing.assert_close(tm.weights[1], (1 - tm.weights[0]).clamp(0, 1), atol=1e-6, rtol=0)
    assert ((tm.weights[1] > 0) & (tm.weights[1] < 1)).any()
