"""Regional prompting on Chroma through the real ComfyUI server: the tiny Chroma (1 double + 1 single block, as
ComfyUI's UNETLoader detects Chroma), the Regional FLUX Patch node, KSampler, 2 steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rl_devkit.demo import shrink_for_tiny_models
from support import graphs
from support.family_server import WORKFLOWS, image, latent, run
from support.workflows import check_ui_matches_api

pytestmark = pytest.mark.server

SIZE = dict(width=112, height=72)  # not multiples of 16: latent 9 x 14, 5 x 7 tokens
LEFT_COLS = 6  # latent columns 0-5: token columns 0-2, all inside region 1 (the left half: 56 px = 7 latent cols)


def chroma(**kwargs) -> dict:
    return graphs.regional_flux(unet=graphs.CHROMA_UNET, **{"cfg": 2.0, "negative": "blurry", **SIZE, **kwargs})


def test_chroma_plain_regional_plain_and_off_switch(comfy_server):
    """The node takes a Chroma model; regional output differs from plain; base_ratio 1 is the plain image exactly;
    the plain model is untouched afterwards (the last plain run samples again: a new seed-equal cache key)."""
    plain = image(comfy_server, chroma(patch=False))
    assert np.abs(image(comfy_server, chroma()) - plain).max() > 0, "regional prompting changed nothing"
    assert np.array_equal(image(comfy_server, chroma(base_ratio=1.0)), plain)
    again = image(comfy_server, chroma(patch=False, base_prompt="a still life on a wooden table "))
    assert np.array_equal(again, plain)


def test_chroma_region_isolation_through_the_sampler(comfy_server):
    """base_ratio 0, every block and step: changing region 2's prompt leaves region 1's sampled latent
    bit-identical and changes region 2's. (No CFG here: the negative pass is plain Chroma over the whole picture,
    which carries region 2's change into region 1 from the second step on.)"""
    common = dict(base_ratio=0.0, control_steps=10, save_latent=True, cfg=1.0, negative=None)
    first = latent(comfy_server, chroma(prompts=("a red apple", "a blue ceramic cup"), **common))
    second = latent(comfy_server, chroma(prompts=("a red apple", "a green glass bottle"), **common))
    assert first.shape == (1, 16, 9, 14)
    assert torch.equal(first[..., :LEFT_COLS], second[..., :LEFT_COLS])
    assert not torch.equal(first[..., :4, 8:], second[..., :4, 8:])  # region 2: the top right


def test_shipped_chroma_workflow(comfy_server):
    """workflows/regional_chroma.json matches its API twin and has a thumbnail; the twin runs, shrunk for the tiny
    models. The real T5-XXL takes about a minute per prompt on two cores, so here its CLIPLoader loads the CLIP-L
    stand-in, whose conditioning has T5's width (tests/test_region_encoding.py runs the real T5)."""
    ui = json.loads((WORKFLOWS / "regional_chroma.json").read_text())
    api = json.loads((WORKFLOWS / "api" / "regional_chroma.json").read_text())
    assert (WORKFLOWS / "regional_chroma.jpg").stat().st_size > 1000
    check_ui_matches_api(comfy_server.object_info(), ui, api)
    shrunk = shrink_for_tiny_models(api)
    loader = next(node for node in shrunk.values() if node["class_type"] == "CLIPLoader")
    assert loader["inputs"]["type"] == "chroma"
    loader["inputs"].update(clip_name=graphs.CLIP_L, type="sd3")
    result = run(comfy_server, shrunk)
    assert len([node for node, out in result.outputs.items() if out.get("images")]) >= 2
