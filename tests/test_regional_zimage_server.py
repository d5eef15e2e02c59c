"""Regional prompting on Z-Image through the real ComfyUI server: the tiny Z-Image (1 joint layer and the 2 + 2
refiner layers at full width, as ComfyUI's UNETLoader detects Z-Image), its template's ModelSamplingAuraFlow and
FLUX's VAE, the Regional FLUX Patch node, KSampler, 1 step. Z-Image's text encoder is Qwen3 4B (8 GB): here the
test-only RLTest_ZImageTextStandIn (tests/support/custom_nodes/rl_test_text_stand_ins) gives ComfyUI's own Z-Image
text encoder with 3 layers at the real width, so the real tokenizer and chat template run."""

from __future__ import annotations

import pytest
from conftest import module_server
from rl_devkit.demo import TEST_NODES
from support import graphs
from support.family_server import (
    ISOLATION_CASES,
    check_batch_with_cfg,
    check_isolation,
    check_off_switches,
    check_shipped_workflow,
)

pytestmark = pytest.mark.server

SIZE = dict(width=112, height=72)  # not multiples of 16: latent 9 x 14, 5 x 7 tokens
LEFT = (..., slice(None, 6))  # latent columns 0-5: token columns 0-2, all inside region 1 (the left half)
TOP_RIGHT = (..., slice(None, 4), slice(8, None))  # latent rows 0-3, columns 8-13: tokens inside region 2
KEPT = dict(region2=(LEFT, TOP_RIGHT), region1=(TOP_RIGHT, LEFT))  # (the pixels kept, the pixels changed)
# One step, one model call: Z-Image's image-only refiner (noise_refiner) stays plain (README), so from the second
# step on it carries one region's sampled latent into the other; within a call the regions are isolated. The
# off switches and the batch need no second step either (each is exact or not within every call), and one step
# halves the module's time.
ONE_STEP = dict(steps=1)


server = module_server(TEST_NODES)


def zimage(**kwargs) -> dict:
    return graphs.regional_zimage(**{**SIZE, **ONE_STEP, **kwargs})


def test_plain_regional_plain_and_off_switches(server):
    """The node takes a Z-Image model; regional output differs from plain; the off switches give the plain image
    exactly; the plain model is untouched afterwards."""
    assert "RLTest_ZImageTextStandIn" in server.object_info(), "the test-only text encoder pack did not load"
    check_off_switches(server, zimage, shape=(72, 112, 3))


@pytest.mark.parametrize("case", list(ISOLATION_CASES))
def test_region_isolation_through_the_sampler(server, case):
    """base_ratio 0, every block, one step: changing one region's prompt leaves the other region's sampled latent
    bit-identical and changes its own (the caption refiner keeps the texts apart too). No CFG: the negative pass is
    plain Z-Image over the whole picture."""
    check_isolation(server, zimage, ISOLATION_CASES[case], *KEPT[case], shape=(1, 16, 9, 14))


def test_batch_with_cfg_and_a_negative_prompt(server):
    """A batch of 2 with CFG and a negative prompt, at a size that is not a multiple of 16 px."""
    check_batch_with_cfg(server, zimage, shape=(72, 112, 3))


def test_shipped_zimage_workflow(server):
    """workflows/regional_zimage.json, with the stand-in in place of its CLIPLoader (Qwen3 4B)."""
    check_shipped_workflow(server, "regional_zimage", "lumina2")
