"""Regional prompting on FLUX.2 through the real ComfyUI server: the tiny FLUX.2 dev (1 double + 1 single block at
the full width 6144, as ComfyUI's UNETLoader detects FLUX.2), its VAE (32 channels, 2x2-patchified to 128), the
template's EmptyFlux2LatentImage and FluxGuidance, the Regional FLUX Patch node, KSampler, 2 steps. FLUX.2's text
encoder is Mistral 3 Small 24B: here the test-only RLTest_Flux2TextStandIn (tests/support/custom_nodes/
rl_test_text_stand_ins/flux2.py) gives ComfyUI's own FLUX.2 text encoder classes at the real width, so the
conditioning has the real width 15360 and Flux2Tokenizer's template runs.

Cost (2 cores, measured on the floor host): the 2.3 B-parameter model runs in float32 on CPU (UNETLoader's
default there, whatever the file's dtype; 11 GB resident), 4-10 s per model call at 5 x 3 tokens depending on the
load; the module took 7.7 min, of which the two tests marked slow (batch + CFG, the workflow) took 3.4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import start_server
from rl_devkit.demo import TEST_NODES, shrink_for_tiny_models, use_text_encoder_stand_ins
from support import graphs
from support.workflows import check_ui_matches_api

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
# Not multiples of 16: EmptyFlux2LatentImage gives 3 x 5 tokens (patch size 1), and the masks are area-resized to
# them (17.6 px per column). A token half covered by two regions belongs to both (and passes one's prompt on to
# the other): the boxes split between token columns 1 and 2 so that none is shared.
SIZE = dict(width=88, height=56)
BOXES = [(0, 0, 35, 56), (35, 0, 53, 28)]  # region 1: token columns 0-1; region 2: columns 2-4, the top half
LEFT = (..., slice(None, 2))  # token columns 0-1: region 1's
TOP_RIGHT = (..., slice(None, 1), slice(2, None))  # token row 0, columns 2-4: region 2's
ISOLATED = dict(base_ratio=0.0, control_steps=10, save_latent=True)


@pytest.fixture(scope="module")
def server(tiny_models):
    """A server of this module's own, so the 9 GB float32 FLUX.2 leaves with it."""
    server = start_server(tiny_models, extra_custom_nodes=(TEST_NODES,))
    yield server
    server.cleanup()


def flux2(**kwargs) -> dict:
    return graphs.regional_flux2(**{**SIZE, "boxes": BOXES, **kwargs})


def run(server, prompt: dict):
    result = server.run(prompt)
    assert result.status == "success", result.error
    return result


def images(server, result) -> list[np.ndarray]:
    return [np.asarray(image).astype(np.int16) for image in server.images(result, "save")]


def image(server, prompt: dict) -> np.ndarray:
    return images(server, run(server, prompt))[0]


def latent(server, prompt: dict) -> torch.Tensor:
    entry = run(server, prompt).outputs["save_latent"]["latents"][0]
    return safetensors.torch.load_file(str(server.output_dir / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def test_plain_regional_plain_and_off_switches(server):
    """The node takes a FLUX.2 model; regional output differs from plain; base_ratio 1 and 0 control steps give
    the plain image exactly; the plain model is untouched afterwards (the last plain run samples again: picking
    item 0 of the batch of 1 changes the cache key, not the noise)."""
    assert "RLTest_Flux2TextStandIn" in server.object_info(), "the test-only text encoder pack did not load"
    plain = image(server, flux2(patch=False))
    assert plain.shape == (48, 80, 3)  # what the 3 x 5 tokens decode to
    assert np.abs(image(server, flux2()) - plain).max() > 0, "regional prompting changed nothing"
    assert np.array_equal(image(server, flux2(base_ratio=1.0)), plain)
    assert np.array_equal(image(server, flux2(control_steps=0)), plain)
    assert np.array_equal(image(server, flux2(patch=False, batch_index=0)), plain)


@pytest.mark.parametrize(
    "changed, kept, other",
    [
        (("a red apple", "a green glass bottle"), LEFT, TOP_RIGHT),
        (("a yellow banana", "a blue ceramic cup"), TOP_RIGHT, LEFT),
    ],
    ids=["region2", "region1"],
)
def test_region_isolation_through_the_sampler(server, changed, kept, other):
    """base_ratio 0, every block and step: changing one region's prompt leaves the other region's sampled latent
    bit-identical and changes its own. (No CFG here: the negative pass is plain FLUX.2 over the whole picture,
    which carries the change into the other region from the second step on.)"""
    first = latent(server, flux2(prompts=("a red apple", "a blue ceramic cup"), **ISOLATED))
    second = latent(server, flux2(prompts=changed, **ISOLATED))
    assert first.shape == (1, 128, 3, 5)
    assert torch.equal(first[kept], second[kept])
    assert not torch.equal(first[other], second[other])


@pytest.mark.slow
def test_batch_with_cfg_and_a_negative_prompt(server):
    """A batch of 2 with CFG and a negative prompt, at a size that is not a multiple of 16 px: both items are
    regional (they differ from the plain batch) and the second equals its batch-1 run (with the noise it has in
    the batch; the model-level tests check the rows to 1e-5)."""
    common = dict(cfg=2.5, negative="blurry, low quality")
    both = images(server, run(server, flux2(batch=2, **common)))
    plain = images(server, run(server, flux2(batch=2, patch=False, **common)))
    assert len(both) == 2 and both[0].shape == (48, 80, 3)
    assert all(np.abs(ours - theirs).max() > 0 for ours, theirs in zip(both, plain))
    single = image(server, flux2(batch=2, batch_index=1, **common))
    assert np.abs(single - both[1]).max() <= 1, "the second item differs from its batch-1 run"


@pytest.mark.slow
def test_shipped_flux2_workflow(server):
    """workflows/regional_flux2.json matches its API twin and has a thumbnail; the twin runs, shrunk for the tiny
    models, with the test-only text encoder stand-in in place of its CLIPLoader (Mistral 3 Small 24B)."""
    ui = json.loads((WORKFLOWS / "regional_flux2.json").read_text())
    api = json.loads((WORKFLOWS / "api" / "regional_flux2.json").read_text())
    assert (WORKFLOWS / "regional_flux2.jpg").stat().st_size > 1000
    check_ui_matches_api(server.object_info(), ui, api)
    loader = next(node for node in api.values() if node["class_type"] == "CLIPLoader")
    assert loader["inputs"]["type"] == "flux2"
    shrunk = use_text_encoder_stand_ins(shrink_for_tiny_models(api))
    assert not any(node["class_type"] == "CLIPLoader" for node in shrunk.values())
    result = run(server, shrunk)
    assert len([node for node, out in result.outputs.items() if out.get("images")]) >= 2
