"""Regional prompting on SD3 / SD3.5 through the real ComfyUI server: the tiny SD3.5 Medium-like MMDiT (2 joint
blocks, 128 wide, image-only x_block attention in block 0, the real text width 4096 and pooled width 2048, as
UNETLoader detects SD3), ModelSamplingSD3 shift 3 and EmptySD3LatentImage as in ComfyUI's SD3.5 template, the
Regional FLUX Patch node, KSampler, 2 steps; and the shipped SD3.5 workflow (CheckpointLoaderSimple). The text
encoder is ComfyUI's own SD3 encoder on the tiny CLIP-L (CLIPLoader type sd3): a CLIP-G is 32 layers at 1280
whatever its file holds (ComfyUI builds it from its own config), too slow on CPU; the conditioning is then
[B, 77, 4096], and each region text is its prompt's whole padded 77 tokens. The VAE is ae.safetensors: FLUX.1's
and SD3's VAE are the same 16-channel KL VAE.

Cost (2 cores, floor host): the module takes about a minute."""

from __future__ import annotations

import pytest
from conftest import module_server
from support import graphs
from support.family_server import (
    ISOLATION_CASES,
    check_batch_with_cfg,
    check_isolation,
    check_off_switches,
    check_shipped_workflow,
)

pytestmark = pytest.mark.server

# Multiples of 16 px: 4 x 6 tokens of 16 px (2x2 latent pixels each), so the boxes split on token boundaries.
SIZE = dict(width=96, height=64)
BOXES = [(0, 0, 32, 64), (32, 0, 64, 32)]  # region 1: token columns 0-1; region 2: columns 2-5, the top row pair
LEFT = (..., slice(None, 4))  # latent columns 0-3: region 1's
TOP_RIGHT = (..., slice(None, 4), slice(4, None))  # latent rows 0-3, columns 4-11: region 2's
# One step: SD3.5 Medium's image-only x_block attention (block 0 here, 0-12 in Medium) is no joint attention and
# stays plain, so from the second step on a changed region's latent reaches the others through it:
# the isolation checks run one step.
ONE_STEP = dict(steps=1)
KEPT = dict(region2=(LEFT, TOP_RIGHT), region1=(TOP_RIGHT, LEFT))  # (the pixels kept, the pixels changed)


server = module_server()


def sd3(**kwargs) -> dict:
    return graphs.regional_sd3(**{**SIZE, "boxes": BOXES, **kwargs})


def test_plain_regional_plain_and_off_switches(server):
    """The node takes an SD3 model; regional output differs from plain; the off switches give the plain image
    exactly; the plain model is untouched afterwards."""
    check_off_switches(server, sd3, shape=(64, 96, 3))


@pytest.mark.parametrize("case", list(ISOLATION_CASES))
def test_region_isolation_through_the_sampler(server, case):
    """base_ratio 0, every block, one step: changing one region's prompt (its whole padded conditioning) leaves
    the other region's sampled latent bit-identical and changes its own. (No CFG here: the negative pass is plain
    SD3 over the whole picture. One step: see ONE_STEP.)"""
    check_isolation(server, sd3, ISOLATION_CASES[case], *KEPT[case], shape=(1, 16, 8, 12), **ONE_STEP)


def test_batch_with_cfg_and_a_negative_prompt(server):
    """A batch of 2 with CFG 4.5 and a negative prompt (as the SD3.5 template), at a size that is not a multiple
    of 16 px (an odd latent, padded to whole tokens)."""
    check_batch_with_cfg(server, sd3, shape=(56, 88, 3), cfg=4.5, width=88, height=56, boxes=None)


def test_shipped_sd35_workflow(server):
    """workflows/regional_sd35.json (CheckpointLoaderSimple with SD3.5 Medium, TripleCLIPLoader, ComfyUI's SD3.5
    template sampling), with CLIP-L through ComfyUI's SD3 encoder in place of its TripleCLIPLoader."""
    check_shipped_workflow(server, "regional_sd35", None)
