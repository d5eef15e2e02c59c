"""LSReGen through a real ComfyUI server on the tiny models: the whole pipeline at a non-square SDXL size,
gamma 0 against the real KSampler node, the autograd path under ComfyUI's inference mode, the shipped API
workflow, and bad inputs rejected with a message naming the input while the server stays up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rl_devkit.demo import shrink_for_tiny_models
from rl_devkit.server import PromptRejected
from support import graphs

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 192, 128  # 3:2, as 1536x1024 is to a square prior
SMALL = dict(width=WIDTH, height=HEIGHT, prior_size=64, steps=4, inversion_steps=2, fraction=0.5)


def saved_latent(server, result, node_id: str) -> torch.Tensor:
    import safetensors.torch

    entry = result.outputs[node_id]["latents"][0]
    path = server.output_dir / entry["subfolder"] / entry["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"]


def test_pipeline_non_square_gamma_zero_and_autograd(comfy_server):
    g = graphs.lsregen_pipeline(**SMALL, gamma=0.3)
    guided = g.lookup_node("guided")
    common = {
        k: guided.inputs[k]
        for k in (
            "seed",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "positive",
            "negative",
            "latent_image",
            "denoise",
        )
    }
    plain = g.node("KSampler", id="plain", **{**common, "model": ["sdxl", 0]})
    zero = g.node("RL_BackwardGuidanceKSampler", id="zero", **{**guided.inputs, "guidance_scale": 0.0})
    auto = g.node(
        "RL_BackwardGuidanceKSampler", id="auto", **{**guided.inputs, "feature": "lowpass", "guidance_scale": 2.0}
    )
    for node in (plain, zero, auto, guided):
        g.node("SaveLatent", id=f"save_{node.id}", samples=node.out(0), filename_prefix=f"lsregen_test/{node.id}")
    result = comfy_server.run(g.finalize())
    assert result.status == "success", result.error
    assert comfy_server.images(result, "save")[0].size == (WIDTH, HEIGHT)
    assert comfy_server.images(result, "save_overlay")[0].size == (WIDTH, HEIGHT)
    assert comfy_server.images(result, "save_prior")[0].size == (64, 64)
    plain_latent = saved_latent(comfy_server, result, "save_plain")
    assert plain_latent.shape == (1, 4, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(saved_latent(comfy_server, result, "save_zero"), plain_latent)
    for node_id in ("save_guided", "save_auto"):
        assert (saved_latent(comfy_server, result, node_id) - plain_latent).abs().max() > 1e-3, node_id
    progress = [e for e in result.events if e["type"] == "progress" and e["data"].get("node") == "guided"]
    assert progress and progress[-1]["data"]["value"] == progress[-1]["data"]["max"] == SMALL["steps"]


def test_shipped_api_workflow_runs_shrunk(comfy_server):
    prompt = json.loads((REPO / "workflows" / "api" / "lsregen_pipeline.json").read_text())
    assert {n["class_type"] for n in prompt.values()} >= {
        "RL_GligenLayoutPrior",
        "RL_LatentInversion",
        "RL_BackwardGuidanceKSampler",
        "RL_RegionOverlay",
    }
    shrunk = shrink_for_tiny_models(prompt)
    for node in shrunk.values():  # keep CI short: a small prior too
        if node["class_type"] == "RL_GligenLayoutPrior":
            node["inputs"].update(width=64, height=64, steps=2)
    result = comfy_server.run(shrunk)
    assert result.status == "success", result.error
    saved = [img for out in result.outputs.values() for img in out.get("images", [])]
    assert len(saved) >= 3


def error_message(server, prompt: dict) -> str:
    try:
        result = server.run(prompt)
    except PromptRejected as err:
        return json.dumps(err.payload)
    assert result.status == "error", f"expected an error, got {result.status}"
    return result.error.get("exception_message", "") if result.error else ""


def bad(**changes) -> dict:
    """The small pipeline with some node inputs changed: {"node_id": {"input": value}}. Without the prior's own
    SaveImage, every output depends on the guided sampler (ComfyUI runs the valid outputs of a partly invalid
    prompt)."""
    g = graphs.lsregen_pipeline(**SMALL, method="forward_noise")
    g.remove_node("save_prior")
    for node_id, inputs in changes.items():
        for key, value in inputs.items():
            g.lookup_node(node_id).set_input(key, value)  # None removes the input
    return g.finalize()


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"prior": {"model": ["sdxl", 0]}}, "model: GLIGEN textbox weights work with SD1.x models only"),
        ({"prior": {"regions": None, "boxes": ""}}, "no boxes"),
        ({"prior": {"regions": None, "boxes": "0.8 0.1 0.5 0.2: a car"}}, "lies outside the image"),
        ({"prior": {"regions": None, "boxes": "0 0 0.1 0.1: a car\n" * 31}}, "at most 30"),
        ({"guided": {"guidance_fraction": 1.5}}, "guidance_fraction"),
        ({"guided": {"guidance_scale": -0.5}}, "guidance_scale"),
        ({"latent": {"width": WIDTH + 64}}, "trajectory: it holds latents of shape"),
    ],
    ids=[
        "sdxl_to_gligen",
        "empty_layout",
        "box_outside",
        "too_many_boxes",
        "fraction",
        "negative_gamma",
        "trajectory_size",
    ],
)
def test_bad_inputs_are_rejected_and_server_stays_up(comfy_server, changes, expected):
    message = error_message(comfy_server, bad(**changes))
    assert expected in message, message
    assert comfy_server.alive
    assert comfy_server.get_json("/system_stats")


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert the UI-format workflow to API format the way the frontend does: widget values in the order of
    the node's inputs (required, then optional; control_after_generate adds one value), links from `links`."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        spec = object_info[node["type"]]
        order = spec["input_order"]
        declared = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        linked = {i["name"]: links[i["link"]] for i in node["inputs"] if i.get("link") is not None}
        values, inputs = iter(node["widgets_values"]), {}
        for name in order.get("required", []) + order.get("optional", []):
            kind = declared[name]
            widget = isinstance(kind[0], list) or kind[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            if widget:
                inputs[name] = next(values)
                if len(kind) > 1 and kind[1].get("control_after_generate"):
                    next(values)
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
        assert next(values, None) is None, f"node {node['id']} ({node['type']}) has extra widget values"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_ui_workflow_matches_object_info_and_its_api_twin(comfy_server):
    info = comfy_server.object_info()
    ui = json.loads((REPO / "workflows" / "lsregen_pipeline.json").read_text())
    api = json.loads((REPO / "workflows" / "api" / "lsregen_pipeline.json").read_text())
    assert (REPO / "workflows" / "lsregen_pipeline.jpg").stat().st_size > 1000
    converted = ui_to_api(ui, info)
    ids = {node["title"]: str(node["id"]) for node in ui["nodes"]}
    titles = {nid: node["_meta"]["title"] for nid, node in api.items()}
    assert sorted(ids) == sorted(titles.values())
    for nid, node in api.items():
        mine = converted[ids[titles[nid]]]
        assert mine["class_type"] == node["class_type"]
        expected = {k: ([ids[titles[v[0]]], v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
        assert mine["inputs"] == expected, node["class_type"]
