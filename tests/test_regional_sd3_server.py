"""Regional prompting on SD3 / SD3.5 through the real ComfyUI server: the tiny SD3.5 Medium-like MMDiT (2 joint
blocks, 128 wide, image-only x_block attention in block 0, the real text width 4096 and pooled width 2048, as
UNETLoader detects SD3), ModelSamplingSD3 shift 3 and EmptySD3LatentImage as in ComfyUI's SD3.5 template, the
Regional FLUX Patch node, KSampler, 2 steps. The text encoder is ComfyUI's own SD3 encoder on the tiny CLIP-L
(CLIPLoader type sd3): a CLIP-G is 32 layers at 1280 whatever its file holds (ComfyUI builds it from its own
config), too slow on CPU; the conditioning is then [B, 77, 4096], and each region text is its prompt's whole
padded 77 tokens. The VAE is ae.safetensors: FLUX.1's and SD3's VAE are the same 16-channel KL VAE.

Cost (2 cores, floor host): the module takes about a minute."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import start_server
from support import graphs

pytestmark = pytest.mark.server

# Multiples of 16 px: 4 x 6 tokens of 16 px (2x2 latent pixels each), so the boxes split on token boundaries.
SIZE = dict(width=96, height=64)
BOXES = [(0, 0, 32, 64), (32, 0, 64, 32)]  # region 1: token columns 0-1; region 2: columns 2-5, the top row pair
LEFT = (..., slice(None, 4))  # latent columns 0-3: region 1's
TOP_RIGHT = (..., slice(None, 4), slice(4, None))  # latent rows 0-3, columns 4-11: region 2's
# One step: SD3.5 Medium's image-only x_block attention (block 0 here, 0-12 in Medium) is no joint attention and
# stays plain, so from the second step on a changed region's latent reaches the others through it.
ISOLATED = dict(base_ratio=0.0, control_steps=10, save_latent=True, steps=1)


@pytest.fixture(scope="module")
def server(tiny_models):
    server = start_server(tiny_models)
    yield server
    server.cleanup()


def sd3(**kwargs) -> dict:
    return graphs.regional_sd3(**{**SIZE, "boxes": BOXES, **kwargs})


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
    """The node takes an SD3 model; regional output differs from plain; base_ratio 1 and 0 control steps give the
    plain image exactly; the plain model is untouched afterwards (the last plain run samples again: picking item
    0 of the batch of 1 changes the cache key, not the noise)."""
    plain = image(server, sd3(patch=False))
    assert plain.shape == (64, 96, 3)
    assert np.abs(image(server, sd3()) - plain).max() > 0, "regional prompting changed nothing"
    assert np.array_equal(image(server, sd3(base_ratio=1.0)), plain)
    assert np.array_equal(image(server, sd3(control_steps=0)), plain)
    assert np.array_equal(image(server, sd3(patch=False, batch_index=0)), plain)


@pytest.mark.parametrize(
    "changed, kept, other",
    [
        (("a red apple", "a green glass bottle"), LEFT, TOP_RIGHT),
        (("a yellow banana", "a blue ceramic cup"), TOP_RIGHT, LEFT),
    ],
    ids=["region2", "region1"],
)
def test_region_isolation_through_the_sampler(server, changed, kept, other):
    """base_ratio 0, every block, one step: changing one region's prompt (its whole padded conditioning) leaves
    the other region's sampled latent bit-identical and changes its own. (No CFG here: the negative pass is plain
    SD3 over the whole picture. One step: see ISOLATED.)"""
    first = latent(server, sd3(prompts=("a red apple", "a blue ceramic cup"), **ISOLATED))
    second = latent(server, sd3(prompts=changed, **ISOLATED))
    assert first.shape == (1, 16, 8, 12)
    assert torch.equal(first[kept], second[kept])
    assert not torch.equal(first[other], second[other])


def test_batch_with_cfg_and_a_negative_prompt(server):
    """A batch of 2 with CFG 4.5 and a negative prompt (as the SD3.5 template), at a size that is not a multiple
    of 16 px (an odd latent, padded to whole tokens): both items are regional (they differ from the plain batch)
    and the second equals its batch-1 run (with the noise it has in the batch)."""
    common = dict(width=88, height=56, boxes=None, cfg=4.5, negative="blurry, low quality")
    both = images(server, run(server, sd3(batch=2, **common)))
    plain = images(server, run(server, sd3(batch=2, patch=False, **common)))
    assert len(both) == 2 and both[0].shape == (56, 88, 3)
    assert all(np.abs(ours - theirs).max() > 0 for ours, theirs in zip(both, plain))
    single = image(server, sd3(batch=2, batch_index=1, **common))
    assert np.abs(single - both[1]).max() <= 1, "the second item differs from its batch-1 run"
