"""The README's compatibility table, row by row, through the real server (tiny FLUX, CLIP-L):
ComfyUI's EasyCache and LazyCache before or after the patcher, the attention back-ends ComfyUI can select on CPU,
another pack's attention override (set in model_options, or replaced per call from a later wrapper), and a
TeaCache-style forward replacement. The stand-ins for other packs live in support/custom_nodes/rl_test_other_pack.
"""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import COMFYUI, REPO, module_server
from rl_devkit.server import ComfyServer
from support import graphs
from test_other_packs import OTHER_PACKS

pytestmark = pytest.mark.server

SIZE = dict(width=192, height=128)  # region 1 is the left half: 96 px, a whole number of FLUX tokens
# beta 0 in every block and step: region 1 sees only its own prompt and image tokens (README "isolation").
ISOLATED = dict(base_ratio=0.0, control_steps=10, double_blocks="all", single_blocks="all", **SIZE)
SECOND_PROMPTS = (graphs.REGION_PROMPTS[0], "a tall green cactus in a clay pot")
ORDER_ERROR = "connect that node before Regional FLUX Patch"


server = module_server(OTHER_PACKS)


def insert(prompt: dict, class_type: str, where: str, **inputs) -> dict:
    """Put a MODEL -> MODEL node right after the UNETLoader ("before" the patcher) or right before the sampler
    ("after" it)."""
    loader = next(k for k, v in prompt.items() if v["class_type"] == "UNETLoader")
    if where == "before":
        consumers = [v for v in prompt.values() if v["inputs"].get("model") == [loader, 0]]
        source = [loader, 0]
    else:
        consumers, source = [prompt["sampler"]], prompt["sampler"]["inputs"]["model"]
    node_id = f"inserted_{len(prompt)}"
    prompt[node_id] = {"class_type": class_type, "inputs": {"model": source, **inputs}}
    for node in consumers:
        node["inputs"]["model"] = [node_id, 0]
    return prompt


def with_latent(prompt: dict) -> dict:
    prompt["latent_out"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["sampler", 0], "filename_prefix": "rl_compat"},
    }
    return prompt


def run(server, prompt: dict):
    result = server.run(prompt)
    error = result.error or {}
    assert result.status == "success", (
        f"{error.get('exception_type')}: {error.get('exception_message')}\n"
        + "".join(error.get("traceback", []))[-3000:]
    )
    return result


def image(server, prompt: dict) -> np.ndarray:
    return np.asarray(server.images(run(server, prompt), "save")[0]).astype(np.int16)


def latent(server, prompt: dict) -> torch.Tensor:
    result = run(server, with_latent(prompt))
    entry = result.outputs["latent_out"]["latents"][0]
    return safetensors.torch.load_file(str(server.output_dir / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def assert_region_one_isolated(server, **changes) -> None:
    """Changing region 2's prompt leaves region 1's latent (left half) bit for bit, and changes region 2's."""
    first = latent(server, graphs.regional_flux(**ISOLATED, **changes))
    second = latent(server, graphs.regional_flux(**ISOLATED, prompts=SECOND_PROMPTS, **changes))
    half = first.shape[-1] // 2
    assert torch.equal(first[..., :half], second[..., :half]), "region 2's prompt leaked into region 1"
    assert not torch.equal(first[..., half:], second[..., half:]), "region 2's prompt changed nothing: test is blind"


def ours(tracebacks: list[str]) -> list[str]:
    """Tracebacks without the in-memory SQLite's thread complaints (ComfyUI's own database code, not sampling)."""
    return [t for t in tracebacks if "sqlalchemy" not in t]


def error_text(server, prompt: dict) -> str:
    result = server.run(prompt)
    assert result.status == "error", "the combination ran although it cannot work"
    assert server.alive
    return result.error["exception_message"]


# ---------------------------------------------------------------------------------------------------------
# Row 3: attention back-ends (first: each starts its own server, before this module's shared one exists)


@pytest.mark.parametrize(
    "flag",
    ["--use-pytorch-cross-attention", "--use-split-cross-attention", "--use-quad-cross-attention", None],
    ids=["pytorch", "split", "quad", "default"],
)
def test_region_isolation_on_every_attention_backend(tiny_models, flag):
    """The pack computes the masked attention itself, so whichever back-end ComfyUI selects (and whether it
    honours masks) cannot switch regional prompting off."""
    server = ComfyServer(COMFYUI, REPO, tiny_models)
    server.flags = tuple(f for f in server.flags if f != "--use-pytorch-cross-attention") + ((flag,) if flag else ())
    server.start()
    try:
        wanted = {
            "--use-split-cross-attention": "Using split optimization",
            "--use-pytorch-cross-attention": "Using pytorch attention",
            "--use-quad-cross-attention": "Using sub quadratic optimization",
        }.get(flag)
        if wanted:
            assert wanted in server.log_text(), server.log_tail()  # ComfyUI really selected that back-end
        assert_region_one_isolated(server)
        plain = image(server, graphs.regional_flux(patch=False, **SIZE))
        assert not np.array_equal(image(server, graphs.regional_flux(**SIZE)), plain)
        assert ours(server.tracebacks()) == []
    finally:
        server.cleanup()


# ---------------------------------------------------------------------------------------------------------
# Row 1: ComfyUI's own step caches


@pytest.mark.parametrize("cache", ["EasyCache", "LazyCache"])
def test_core_step_caches_before_or_after_the_patcher(server, cache):
    """Both wrap the model call from outside FLUX's blocks. With a threshold that never skips a step the image is
    exactly the uncached regional one in either order; with one that skips, sampling still runs."""
    common = dict(steps=4, **SIZE)
    regional = image(server, graphs.regional_flux(**common))
    plain = image(server, graphs.regional_flux(patch=False, **common))
    assert not np.array_equal(regional, plain)
    never = dict(reuse_threshold=0.0, start_percent=0.0, end_percent=1.0, verbose=False)
    for where in ("before", "after"):
        cached = image(server, insert(graphs.regional_flux(**common), cache, where, **never))
        assert np.array_equal(cached, regional), f"{cache} {where} the patcher changed a run that skips no step"
    skipping = dict(reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=True)
    for where in ("before", "after"):
        start = len(server.log_text())
        image(server, insert(graphs.regional_flux(**common), cache, where, **skipping))
        assert "skipping step" in server.log_text()[start:], f"{cache} skipped nothing: the run proves nothing"
    assert ours(server.tracebacks()) == []


# ---------------------------------------------------------------------------------------------------------
# Rows 4 and 5: other packs' attention overrides and forward replacements


def test_attention_override_in_model_options_is_chained_in_either_order(server):
    """KJNodes' way (transformer_options["optimized_attention_override"] on the model, replacing ComfyUI's
    attention): the pack's per-call override always wins and calls the other one for the plain attention, so the
    node order does not matter, the other override still acts, and regions stay isolated."""
    other = dict(scale=0.98)
    base = dict(base_ratio=0.5, double_blocks="all", single_blocks="none", **SIZE)
    ours = image(server, graphs.regional_flux(**base))
    other_only = image(
        server, insert(graphs.regional_flux(patch=False, **SIZE), "RLTest_AttentionOverridePatch", "after", **other)
    )
    both = [
        image(server, insert(graphs.regional_flux(**base), "RLTest_AttentionOverridePatch", w, **other))
        for w in ("before", "after")
    ]
    assert np.array_equal(both[0], both[1])
    assert not np.array_equal(both[0], ours), "the other pack's override was dropped"
    assert not np.array_equal(both[0], other_only), "regional prompting was switched off"
    for where in ("before", "after"):
        prompt = insert(with_latent(graphs.regional_flux(**ISOLATED)), "RLTest_AttentionOverridePatch", where, **other)
        assert run(server, prompt).status == "success"
    assert_region_one_isolated(server)


def test_override_replaced_per_call_after_the_patcher_is_refused_naming_the_order(server):
    """A pack that puts its own override into each call (a DIFFUSION_MODEL wrapper) after ours replaces ours:
    refused on the first step with the cause and the node order that works; that order then runs, with the other
    override doing the plain attention of the unselected blocks."""
    base = dict(base_ratio=0.5, double_blocks="all", single_blocks="none", **SIZE)
    after = insert(graphs.regional_flux(**base), "RLTest_AttentionOverrideWrapper", "after", scale=0.98)
    message = error_text(server, after)
    assert "attention patch" in message and ORDER_ERROR in message, message
    before = insert(graphs.regional_flux(**base), "RLTest_AttentionOverrideWrapper", "before", scale=0.98)
    chained = image(server, before)
    assert not np.array_equal(chained, image(server, graphs.regional_flux(**base))), "the other override was lost"
    assert not np.array_equal(
        chained,
        image(
            server,
            insert(graphs.regional_flux(patch=False, **SIZE), "RLTest_AttentionOverrideWrapper", "after", scale=0.98),
        ),
    )


@pytest.mark.parametrize("where", ["before", "after"])
def test_forward_replacing_cache_is_refused(server, where):
    """TeaCache/MagCache swap FLUX's forward for their own, which drops the attention override: a clear error,
    and the server carries on."""
    message = error_text(server, insert(graphs.regional_flux(**SIZE), "RLTest_ForwardReplacingCache", where))
    assert "TeaCache" in message and "replaces FLUX's forward" in message, message
    assert image(server, graphs.regional_flux(**SIZE)).size
