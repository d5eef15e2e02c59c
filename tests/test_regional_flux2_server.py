"""Regional prompting on FLUX.2 through the real ComfyUI server: the tiny FLUX.2 dev (1 double + 1 single block at
the full width 6144, as ComfyUI's UNETLoader detects FLUX.2), its VAE (32 channels, 2x2-patchified to 128), the
template's EmptyFlux2LatentImage and FluxGuidance, the Regional FLUX Patch node, KSampler, 2 steps. FLUX.2's text
encoder is Mistral 3 Small 24B: here the test-only RLTest_Flux2TextStandIn (tests/support/custom_nodes/
rl_test_text_stand_ins/flux2.py) gives ComfyUI's own FLUX.2 text encoder classes at the real width, so the
conditioning has the real width 15360 and Flux2Tokenizer's template runs.

Cost (2 cores, measured on the floor host): the 2.3 B-parameter model runs in float32 on CPU (UNETLoader's
default there, whatever the file's dtype; 11 GB resident), 4-10 s per model call at 5 x 3 tokens depending on the
load; the module took 7.7 min, of which the two tests marked slow (batch + CFG, the workflow) took 3.4, before
the off switches and the batch check went down to one step (those two: 171 s together)."""

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

# Not multiples of 16: EmptyFlux2LatentImage gives 3 x 5 tokens (patch size 1), and the masks are area-resized to
# them (17.6 px per column). A token half covered by two regions belongs to both (and passes one's prompt on to
# the other): the boxes split between token columns 1 and 2 so that none is shared.
SIZE = dict(width=88, height=56)
BOXES = [(0, 0, 35, 56), (35, 0, 53, 28)]  # region 1: token columns 0-1; region 2: columns 2-4, the top half
LEFT = (..., slice(None, 2))  # token columns 0-1: region 1's
TOP_RIGHT = (..., slice(None, 1), slice(2, None))  # token row 0, columns 2-4: region 2's
KEPT = dict(region2=(LEFT, TOP_RIGHT), region1=(TOP_RIGHT, LEFT))  # (the pixels kept, the pixels changed)


server = module_server(TEST_NODES)


def flux2(**kwargs) -> dict:
    return graphs.regional_flux2(**{**SIZE, "boxes": BOXES, **kwargs})


def flux2_one_step(**kwargs) -> dict:
    """The off switches and the batch check hold at every step; one step halves FLUX.2's slowest tests on CPU."""
    return flux2(**{"steps": 1, **kwargs})


def test_plain_regional_plain_and_off_switches(server):
    """The node takes a FLUX.2 model; regional output differs from plain; the off switches give the plain image
    exactly; the plain model is untouched afterwards."""
    assert "RLTest_Flux2TextStandIn" in server.object_info(), "the test-only text encoder pack did not load"
    check_off_switches(server, flux2_one_step, shape=(48, 80, 3))  # what the 3 x 5 tokens decode to


@pytest.mark.parametrize("case", list(ISOLATION_CASES))
def test_region_isolation_through_the_sampler(server, case):
    """base_ratio 0, every block and step: changing one region's prompt leaves the other region's sampled latent
    bit-identical and changes its own. (No CFG here: the negative pass is plain FLUX.2 over the whole picture,
    which carries the change into the other region from the second step on.)"""
    check_isolation(server, flux2, ISOLATION_CASES[case], *KEPT[case], shape=(1, 128, 3, 5))


@pytest.mark.slow
def test_batch_with_cfg_and_a_negative_prompt(server):
    """A batch of 2 with CFG and a negative prompt, at a size that is not a multiple of 16 px."""
    check_batch_with_cfg(server, flux2_one_step, shape=(48, 80, 3))


@pytest.mark.slow
def test_shipped_flux2_workflow(server):
    """workflows/regional_flux2.json, with the stand-in in place of its CLIPLoader (Mistral 3 Small 24B)."""
    check_shipped_workflow(server, "regional_flux2", "flux2")
