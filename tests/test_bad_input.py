"""The bad-input matrix (issue 7): malformed prompts for every node of the pack through `POST /prompt`.

Each one must end in a node-level error that names the offending input (at validation where ComfyUI can tell,
else at execution), the server must stay up, and afterwards a valid prompt must give the image it gives on a
fresh server.
"""

from __future__ import annotations

import copy
import io
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from conftest import start_server
from PIL import Image
from rl_devkit.server import PromptRejected
from support import graphs

pytestmark = pytest.mark.server


@dataclass(frozen=True)
class Case:
    name: str
    base: str  # which valid prompt it breaks
    node: str  # class_type of the node whose input is wrong
    inputs: frozenset[str] | set[str]  # an error must name one of these (input names)
    change: Callable[[dict, str], None]  # (prompt, id of `node`) -> None, edits the prompt in place


def node_id(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def set_input(name: str, value) -> Callable[[dict, str], None]:
    def change(prompt: dict, nid: str) -> None:
        prompt[nid]["inputs"][name] = value

    return change


def drop_input(name: str) -> Callable[[dict, str], None]:
    def change(prompt: dict, nid: str) -> None:
        del prompt[nid]["inputs"][name]

    return change


def link_input(name: str, class_type: str, output: int = 0) -> Callable[[dict, str], None]:
    """Connect input `name` to output `output` of the first node of `class_type` (a wrong-type link)."""

    def change(prompt: dict, nid: str) -> None:
        prompt[nid]["inputs"][name] = [node_id(prompt, class_type), output]

    return change


def add_node_and_link(name: str, class_type: str, inputs: dict) -> Callable[[dict, str], None]:
    def change(prompt: dict, nid: str) -> None:
        prompt["extra"] = {"class_type": class_type, "inputs": inputs}
        prompt[nid]["inputs"][name] = ["extra", 0]

    return change


def repeat_masks(count: int) -> Callable[[dict, str], None]:
    """Feed RL_RegionsFromMasks `count` copies of its first mask, with as many prompts."""

    def change(prompt: dict, nid: str) -> None:
        first_mask = next(k for k, v in prompt.items() if v["class_type"] == "MaskComposite")
        prompt["as_image"] = {"class_type": "MaskToImage", "inputs": {"mask": [first_mask, 0]}}
        prompt["repeated"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["as_image", 0], "amount": count}}
        prompt["masks"] = {"class_type": "ImageToMask", "inputs": {"image": ["repeated", 0], "channel": "red"}}
        prompt[nid]["inputs"]["masks"] = ["masks", 0]
        prompt[nid]["inputs"]["prompts"] = "\n".join(f"thing {i}" for i in range(count))

    return change


def editor_state(regions: list[dict] | None = None, **extra) -> str:
    return json.dumps({"version": 1, "regions": regions if regions is not None else [], **extra})


RECT = {"type": "rect", "x": 0.1, "y": 0.1, "w": 0.3, "h": 0.3}
NAN = float("nan")
FLUX, LAYOUT, LSREGEN, COLORMAP, LORA = "regional_flux", "layout", "lsregen", "color_map", "regional_lora"
MASKS, OVERLAY, ENCODE, PATCH = (
    "RL_RegionsFromMasks",
    "RL_RegionOverlay",
    "RL_RegionalPromptEncode",
    "RL_RegionalFluxPatch",
)
EDITOR, FROM_COLORS = "RL_RegionLayout", "RL_RegionsFromColorMap"
PRIOR, INVERSION, GUIDED = "RL_GligenLayoutPrior", "RL_LatentInversion", "RL_BackwardGuidanceKSampler"
REGIONAL_LORA = "RL_RegionalLora"

CASES = [
    # Regions From Masks
    Case("masks-more-prompts", FLUX, MASKS, {"prompts"}, set_input("prompts", "a\nb\nc")),
    Case("masks-no-prompts", FLUX, MASKS, {"prompts"}, set_input("prompts", "")),
    Case("masks-width-zero", FLUX, MASKS, {"width"}, set_input("width", 0)),
    Case("masks-height-huge", FLUX, MASKS, {"height"}, set_input("height", 100000)),
    Case("masks-feather-nan", FLUX, MASKS, {"feather"}, set_input("feather", NAN)),
    Case("masks-feather-negative", FLUX, MASKS, {"feather"}, set_input("feather", -1.0)),
    Case("masks-image-link", FLUX, MASKS, {"masks"}, link_input("masks", "MaskToImage")),
    Case("masks-missing", FLUX, MASKS, {"masks"}, drop_input("masks")),
    Case("masks-300-regions", FLUX, MASKS, {"masks", "regions"}, repeat_masks(300)),
    # ComfyUI reports a dangling link on the node but without the input's name: the node is all we can ask for.
    Case(
        "masks-layout-too-large",
        FLUX,
        MASKS,
        {"width/height", "regions"},
        lambda p, nid: (repeat_masks(4)(p, nid), p[nid]["inputs"].update(width=16384, height=16384)),
    ),
    Case("masks-link-to-nowhere", FLUX, MASKS, frozenset(), set_input("masks", ["no_such_node", 0])),
    # Region Overlay
    Case("overlay-opacity-2", FLUX, OVERLAY, {"opacity"}, set_input("opacity", 2.0)),
    Case("overlay-opacity-nan", FLUX, OVERLAY, {"opacity"}, set_input("opacity", NAN)),
    Case("overlay-regions-mask-link", FLUX, OVERLAY, {"regions"}, link_input("regions", "MaskComposite")),
    Case("overlay-image-missing", FLUX, OVERLAY, {"image"}, drop_input("image")),
    # Region Layout (editor)
    Case("editor-broken-json", LAYOUT, EDITOR, {"editor_state"}, set_input("editor_state", "{not json")),
    Case(
        "editor-version-99",
        LAYOUT,
        EDITOR,
        {"editor_state"},
        set_input("editor_state", json.dumps({"version": 99, "regions": []})),
    ),
    Case(
        "editor-300-regions",
        LAYOUT,
        EDITOR,
        {"editor_state"},
        set_input("editor_state", editor_state([{"prompt": f"r{i}", "shapes": [RECT]} for i in range(300)])),
    ),
    Case(
        "editor-nan-coordinate",
        LAYOUT,
        EDITOR,
        {"editor_state"},
        set_input("editor_state", editor_state([{"prompt": "r", "shapes": [{**RECT, "x": NAN}]}])),
    ),
    Case(
        "editor-zero-area-box",
        LAYOUT,
        EDITOR,
        {"editor_state"},
        set_input("editor_state", editor_state([{"prompt": "r", "box": [10, 10, 0, 0]}])),
    ),
    Case("editor-not-an-object", LAYOUT, EDITOR, {"editor_state"}, set_input("editor_state", "[1, 2, 3]")),
    Case(
        "editor-oversized",
        LAYOUT,
        EDITOR,
        {"editor_state"},
        set_input("editor_state", editor_state([{"prompt": "x" * 17_000_000, "shapes": [RECT]}])),
    ),
    Case(
        "editor-layout-too-large",
        LAYOUT,
        EDITOR,
        {"width/height", "regions"},
        lambda p, nid: p[nid]["inputs"].update(
            width=16384,
            height=16384,
            editor_state=editor_state([{"prompt": f"r{i}", "shapes": [RECT]} for i in range(3)]),
        ),
    ),
    Case("editor-width-8", LAYOUT, EDITOR, {"width"}, set_input("width", 8)),
    Case(
        "editor-layout-json-broken",
        LAYOUT,
        EDITOR,
        {"layout_json"},
        add_node_and_link("layout_json", "PrimitiveString", {"value": "{broken"}),
    ),
    # Regions From Color Map
    Case("colormap-too-few-prompts", COLORMAP, FROM_COLORS, {"prompts", "color_map"}, set_input("prompts", "")),
    Case("colormap-tolerance-huge", COLORMAP, FROM_COLORS, {"tolerance"}, set_input("tolerance", 10_000)),
    Case("colormap-mask-link", COLORMAP, FROM_COLORS, {"color_map"}, link_input("color_map", "SolidMask")),
    # Regional Prompt Encode
    Case("encode-clip-is-model", FLUX, ENCODE, {"clip"}, link_input("clip", "UNETLoader")),
    Case("encode-regions-is-mask", FLUX, ENCODE, {"regions"}, link_input("regions", "MaskComposite")),
    Case("encode-regions-missing", FLUX, ENCODE, {"regions"}, drop_input("regions")),
    Case(
        "encode-no-prompt",
        FLUX,
        MASKS,
        {"regions", "prompt"},
        lambda p, nid: (set_input("prompts", " \n ")(p, nid), set_input("background_prompt", "")(p, nid)),
    ),
    # Regional FLUX Patch
    Case("patch-beta-1.5", FLUX, PATCH, {"base_ratio"}, set_input("base_ratio", 1.5)),
    Case("patch-beta-nan", FLUX, PATCH, {"base_ratio"}, set_input("base_ratio", NAN)),
    Case("patch-double-blocks-garbage", FLUX, PATCH, {"double_blocks"}, set_input("double_blocks", "zero-seven")),
    Case("patch-single-blocks-range", FLUX, PATCH, {"single_blocks"}, set_input("single_blocks", "0-99")),
    Case("patch-every-0", FLUX, PATCH, {"double_blocks"}, set_input("double_blocks", "every 0")),
    Case("patch-control-steps-negative", FLUX, PATCH, {"control_steps"}, set_input("control_steps", -1)),
    Case(
        "patch-sdxl-model",
        FLUX,
        PATCH,
        {"model"},
        add_node_and_link("model", "CheckpointLoaderSimple", {"ckpt_name": graphs.SDXL}),
    ),
    Case("patch-cond-is-conditioning", FLUX, PATCH, {"regional_cond"}, link_input("regional_cond", ENCODE, 0)),
    Case(
        "patch-video-latent",
        FLUX,
        "KSampler",
        {"latent"},
        lambda p, nid: p[node_id(p, "EmptySD3LatentImage")].update(
            class_type="EmptyHunyuanLatentVideo", inputs={"width": 64, "height": 64, "length": 9, "batch_size": 1}
        ),
    ),
    # Regional LoRA
    Case("lora-region-unknown", LORA, REGIONAL_LORA, {"region"}, set_input("region", "nowhere")),
    Case("lora-region-zero", LORA, REGIONAL_LORA, {"region"}, set_input("region", "0")),
    Case("lora-strength-nan", LORA, REGIONAL_LORA, {"strength_model"}, set_input("strength_model", NAN)),
    Case("lora-name-unknown", LORA, REGIONAL_LORA, {"lora_name"}, set_input("lora_name", "nope.safetensors")),
    Case(
        "lora-model-not-patched",
        LORA,
        REGIONAL_LORA,
        {"model"},
        lambda p, nid: set_input("model", [node_id(p, "UNETLoader"), 0])(p, nid),
    ),
    # GLIGEN Layout Prior
    Case(
        "prior-31-boxes",
        LSREGEN,
        PRIOR,
        {"boxes", "regions"},
        lambda p, nid: (
            p[nid]["inputs"].pop("regions"),
            set_input("boxes", "\n".join(f"0.1 0.1 0.2 0.2: thing {i}" for i in range(31)))(p, nid),
        ),
    ),
    Case(
        "prior-boxes-garbage",
        LSREGEN,
        PRIOR,
        {"boxes"},
        lambda p, nid: (p[nid]["inputs"].pop("regions"), set_input("boxes", "a,b,c")(p, nid)),
    ),
    Case("prior-sdxl-model", LSREGEN, PRIOR, {"model"}, set_input("model", ["sdxl", 0])),
    Case("prior-width-32", LSREGEN, PRIOR, {"width"}, set_input("width", 32)),
    Case("prior-steps-0", LSREGEN, PRIOR, {"steps"}, set_input("steps", 0)),
    Case("prior-sampler-unknown", LSREGEN, PRIOR, {"sampler_name"}, set_input("sampler_name", "nope")),
    Case("prior-gligen-is-model", LSREGEN, PRIOR, {"gligen"}, link_input("gligen", "CheckpointLoaderSimple")),
    # Latent Inversion
    Case("inversion-fraction-1.5", LSREGEN, INVERSION, {"guidance_fraction"}, set_input("guidance_fraction", 1.5)),
    Case("inversion-method-magic", LSREGEN, INVERSION, {"method"}, set_input("method", "magic")),
    Case("inversion-latent-is-image", LSREGEN, INVERSION, {"latent"}, link_input("latent", "ImageScale")),
    Case("inversion-fraction-nan", LSREGEN, INVERSION, {"guidance_fraction"}, set_input("guidance_fraction", NAN)),
    # Backward Guidance KSampler
    Case("guided-scale-negative", LSREGEN, GUIDED, {"guidance_scale"}, set_input("guidance_scale", -1.0)),
    Case("guided-scale-nan", LSREGEN, GUIDED, {"guidance_scale"}, set_input("guidance_scale", NAN)),
    Case("guided-feature-unknown", LSREGEN, GUIDED, {"feature"}, set_input("feature", "unknown")),
    Case("guided-trajectory-missing", LSREGEN, GUIDED, {"trajectory"}, drop_input("trajectory")),
    Case(
        "guided-other-size",
        LSREGEN,
        GUIDED,
        {"trajectory"},
        add_node_and_link("latent_image", "EmptyLatentImage", {"width": 64, "height": 96, "batch_size": 1}),
    ),
    Case(
        "guided-masked-without-regions",
        LSREGEN,
        GUIDED,
        {"regions"},
        lambda p, nid: (p[nid]["inputs"].pop("regions"), set_input("feature", "masked")(p, nid)),
    ),
]


def base_prompt(kind: str) -> dict:
    if kind == FLUX:
        return graphs.regional_flux(width=64, height=64, steps=1, overlay=True)
    if kind == LORA:
        return graphs.regional_flux(width=64, height=64, steps=1, regional_loras=[(graphs.FLUX_LORA, 1.0, "1")])
    if kind == LAYOUT:
        return graphs.region_layout_preview(width=64, height=64, regions=[{"prompt": "a", "shapes": [RECT]}])
    if kind == LSREGEN:
        prompt = graphs.lsregen_pipeline(width=64, height=64, prior_size=64, steps=2, inversion_steps=1).finalize()
        prompt["prior"]["inputs"]["steps"] = 1
        return prompt
    if kind == COLORMAP:
        g = graphs.graph()
        red = g.node("EmptyImage", width=64, height=64, batch_size=1, color=0xFF0000)
        node = g.node(
            "RL_RegionsFromColorMap",
            color_map=red.out(0),
            prompts="a red thing",
            tolerance=16,
            width=64,
            height=64,
            base_prompt="",
            background_prompt="",
        )
        g.node("SolidMask", value=1.0, width=8, height=8)  # a MASK output for the wrong-link case
        g.node("PreviewImage", images=node.out(2))
        return g.finalize()
    raise KeyError(kind)


def error_text(node_error: dict) -> str:
    parts = []
    for err in node_error.get("errors", []):
        parts += [err.get("message", ""), err.get("details", ""), json.dumps(err.get("extra_info", {}))]
    return " ".join(parts)


def names_input(text: str, inputs: frozenset[str]) -> bool:
    return any(name in text for name in inputs)


@pytest.fixture(scope="module")
def fresh_server(tiny_models):
    server = start_server(tiny_models)
    yield server
    server.cleanup()


def reference_image(server) -> np.ndarray:
    result = server.run(graphs.regional_flux(width=64, height=64, steps=1, overlay=True, seed=3))
    assert result.status == "success", result.error
    assert "sampler" in result.executed_nodes
    return np.asarray(Image.open(io.BytesIO(server.view(result.outputs["save"]["images"][0]))))


def test_matrix_is_large_and_covers_every_node():
    from regional_layout.nodes import NODES

    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    ours = {n.GET_SCHEMA().node_id for n in NODES}
    assert ours <= {c.node for c in CASES}, f"nodes without a bad-input case: {ours - {c.node for c in CASES}}"


def test_bad_inputs_get_clear_node_errors_and_the_server_recovers(fresh_server):
    server = fresh_server
    before = reference_image(server)
    failures = []
    for case in CASES:
        prompt = copy.deepcopy(base_prompt(case.base))
        case.change(prompt, node_id(prompt, case.node))
        try:
            result = server.run(prompt, timeout=600)
            errors, text = result.node_errors, str(result.node_errors)
        except PromptRejected as rejected:  # validation failed for every output
            errors, text = rejected.node_errors, rejected.text()
        if errors:  # validation: the error is keyed by node (the other outputs may still have run)
            hit = [
                nid
                for nid, err in errors.items()
                if prompt.get(nid, {}).get("class_type") == case.node
                and (not case.inputs or names_input(error_text(err), case.inputs))
            ]
            if not hit:
                failures.append(
                    f"{case.name}: rejected without naming {sorted(case.inputs)} on {case.node}: {text[:300]}"
                )
            continue
        if result.status != "error":
            failures.append(f"{case.name}: ran to {result.status}")
            continue
        err = result.error
        if err.get("node_type") != case.node or not names_input(err.get("exception_message", ""), case.inputs):
            failures.append(
                f"{case.name}: error in {err.get('node_type')} does not name {sorted(case.inputs)}: "
                f"{err.get('exception_message', '')[:300]}"
            )
        elif len(err.get("exception_message", "")) > 400:
            failures.append(f"{case.name}: error message too long ({len(err['exception_message'])} chars)")
        assert server.alive, f"the server died on {case.name}"
    assert not failures, "\n".join(failures)
    assert np.array_equal(reference_image(server), before), "a bad prompt left something behind"


def test_broken_request_bodies_are_refused_and_the_server_stays_up(fresh_server):
    server = fresh_server
    codes = {}
    for body in (
        b"{not json",
        b'{"prompt": "a string"}',
        b'{"prompt": {"1": {"class_type": "RL_Nope", "inputs": {}}}}',
        json.dumps({"prompt": {"1": {"class_type": MASKS}}}).encode(),
    ):
        request = urllib.request.Request(
            server.url + "/prompt", data=body, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        codes[body[:40]] = refused.value.code
    # ComfyUI 0.3.75 itself answers 500 to a body that is not JSON or whose prompt is not an object (its aiohttp
    # handler raises); what reaches node validation must be a 400 with node errors.
    garbage, prompts = list(codes.values())[:2], list(codes.values())[2:]
    assert all(code >= 400 for code in garbage) and all(code == 400 for code in prompts), codes
    assert server.alive and server.get_json("/system_stats")
