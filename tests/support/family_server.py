"""What every family's server test shares: queueing a graph and reading back its images or saved latent, and the
checks that read the same for every family through the queue (off switches and the untouched model, region
isolation, batch 2 with CFG and a negative prompt, the shipped workflow). `graph(**kwargs)` builds the family's
API prompt (tests/support/graphs.py) with the module's size and boxes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import safetensors.torch
import torch

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
# base_ratio 0 in every block and control step, the sampled latent saved: the setting of the isolation checks.
ISOLATED = dict(base_ratio=0.0, control_steps=10, save_latent=True)
# Two prompts, then each region's prompt changed in turn: (prompts, the region kept, the region changed).
FIRST_PROMPTS = ("a red apple", "a blue ceramic cup")
ISOLATION_CASES = dict(
    region2=("a red apple", "a green glass bottle"), region1=("a yellow banana", "a blue ceramic cup")
)

Graph = Callable[..., dict]


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


def check_off_switches(server, graph: Graph, shape: tuple[int, ...] | None = None) -> None:
    """Regional output differs from plain; base_ratio 1 and 0 control steps give the plain image exactly; the plain
    model is untouched afterwards (the last plain run samples again: picking item 0 of the batch of 1 changes the
    cache key, not the noise)."""
    plain = image(server, graph(patch=False))
    if shape is not None:
        assert plain.shape == shape
    assert np.abs(image(server, graph()) - plain).max() > 0, "regional prompting changed nothing"
    assert np.array_equal(image(server, graph(base_ratio=1.0)), plain)
    assert np.array_equal(image(server, graph(control_steps=0)), plain)
    assert np.array_equal(image(server, graph(patch=False, batch_index=0)), plain)


def check_isolation(server, graph: Graph, changed: tuple[str, str], kept, other, shape: tuple[int, ...], **kwargs):
    """With `ISOLATED` (and `kwargs`), changing one region's prompt leaves the latent pixels `kept` (the other
    region's) bit-identical and changes `other` (its own). The first run is the same for every case, so the
    server's cache serves it after the first."""
    first = latent(server, graph(prompts=FIRST_PROMPTS, **ISOLATED, **kwargs))
    second = latent(server, graph(prompts=changed, **ISOLATED, **kwargs))
    assert first.shape == shape
    assert torch.equal(first[kept], second[kept])
    assert not torch.equal(first[other], second[other])


def check_batch_with_cfg(server, graph: Graph, shape: tuple[int, ...], cfg: float = 2.5, **kwargs) -> None:
    """A batch of 2 with CFG and a negative prompt: both items are regional (they differ from the plain batch) and
    the second equals its batch-1 run (with the noise it has in the batch; the model-level tests check the rows to
    1e-5)."""
    common = dict(cfg=cfg, negative="blurry, low quality", **kwargs)
    both = images(server, run(server, graph(batch=2, **common)))
    plain = images(server, run(server, graph(batch=2, patch=False, **common)))
    assert len(both) == 2 and both[0].shape == shape
    assert all(np.abs(ours - theirs).max() > 0 for ours, theirs in zip(both, plain))
    single = image(server, graph(batch=2, batch_index=1, **common))
    assert np.abs(single - both[1]).max() <= 1, "the second item differs from its batch-1 run"


def check_shipped_workflow(server, name: str, clip_type: str | None) -> None:
    """workflows/<name>.json matches its API twin and has a thumbnail; the twin runs, shrunk for the tiny models,
    with the test-only text encoder stand-in in place of its CLIPLoader of `clip_type`, or (`clip_type` None) in
    place of its TripleCLIPLoader (SD3.5)."""
    from rl_devkit.demo import shrink_for_tiny_models, use_text_encoder_stand_ins
    from support.workflows import check_ui_matches_api

    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert (WORKFLOWS / f"{name}.jpg").stat().st_size > 1000
    check_ui_matches_api(server.object_info(), ui, api)
    loader_class = "TripleCLIPLoader" if clip_type is None else "CLIPLoader"
    loader = next(node for node in api.values() if node["class_type"] == loader_class)
    assert loader["inputs"].get("type") == clip_type
    shrunk = use_text_encoder_stand_ins(shrink_for_tiny_models(api))
    assert not any(node["class_type"] == loader_class for node in shrunk.values())
    result = run(server, shrunk)
    assert len([node for node, out in result.outputs.items() if out.get("images")]) >= 2
