"""Another pack's patches on the same model (issue 7): a model_function_wrapper and a FLUX block replacement
applied before or after ours both keep working, and ours comes on top without removing them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import module_server
from PIL import Image
from support import graphs

pytestmark = pytest.mark.server

OTHER_PACKS = Path(__file__).parent / "support" / "custom_nodes"


server = module_server(OTHER_PACKS)


def with_other_patch(prompt: dict, where: str) -> dict:
    """Put the other pack's patch right after the model loader ("before" ours) or right before the sampler."""
    loader = next(k for k, v in prompt.items() if v["class_type"] == "UNETLoader")
    sampler = prompt["sampler"]
    if where == "before":
        consumers = [v for v in prompt.values() if v["inputs"].get("model") == [loader, 0]]
        source = [loader, 0]
    else:
        consumers, source = [sampler], sampler["inputs"]["model"]
    prompt["other"] = {
        "class_type": "RLTest_OtherPackPatch",
        "inputs": {"model": source, "output_scale": 0.9, "block_scale": 1.05},
    }
    for node in consumers:
        node["inputs"]["model"] = ["other", 0]
    return prompt


def image(server, prompt: dict) -> np.ndarray:
    result = server.run(prompt)
    assert result.status == "success", result.error
    return np.asarray(Image.open(io.BytesIO(server.view(result.outputs["save"]["images"][0]))), dtype=np.int16)


def test_other_packs_patches_survive_ours(server):
    assert "RLTest_OtherPackPatch" in server.object_info(), "the stand-in pack did not load"
    size = dict(width=96, height=64, steps=2)
    plain = image(server, graphs.regional_flux(patch=False, **size))
    other_only = image(server, with_other_patch(graphs.regional_flux(patch=False, **size), "after"))
    assert not np.array_equal(plain, other_only), "the other pack's patch has no visible effect: the test is blind"

    # With base_ratio 1 our patch is transparent: the other pack's effect must be exactly what remains.
    for where in ("before", "after"):
        transparent = with_other_patch(graphs.regional_flux(base_ratio=1.0, **size), where)
        assert np.array_equal(image(server, transparent), other_only), f"other pack's patch lost ({where} ours)"

    # Regional and patched by both: the order of the two nodes does not matter, and the other pack still acts.
    ours_only = image(server, graphs.regional_flux(base_ratio=0.0, **size))
    both = [
        image(server, with_other_patch(graphs.regional_flux(base_ratio=0.0, **size), w)) for w in ("before", "after")
    ]
    assert np.array_equal(both[0], both[1])
    assert not np.array_equal(both[0], ours_only)
    assert not np.array_equal(both[0], other_only)
    assert server.tracebacks() == []
