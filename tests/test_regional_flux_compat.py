"""Regional FLUX with what users combine it with: a LoRA loaded before (or after) the patcher, an XLabs FLUX
ControlNet (it must get the base prompt only, and none of the regional attention), and FLUX.1 schnell.

Server tests run the real graph (tiny FLUX: 1 double + 1 single block, 2 steps, 128 x 80: the XLabs hint encoder
needs sides that are multiples of 16). The in-process tests use ComfyUI's own loaders, nodes and sampler, with torch
hooks on the model instances to see what each network receives.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from support import graphs

torch.set_num_threads(1)

SIZE = dict(width=128, height=80)
MOVED = [(0, 0, 48, 80), (48, 32, 80, 48)]  # the two regions of the default layout, moved


def image(server, prompt: dict, node: str = "save"):
    result = server.run(prompt)
    assert result.status == "success", result.error
    return np.asarray(server.images(result, node)[0]).astype(np.int16), result


def mean_diff(a, b) -> float:
    return float(np.abs(a - b).mean())


# ---------------------------------------------------------------------------------------------------------
# Through the server


@pytest.mark.server
def test_lora_before_or_after_the_patcher(comfy_server):
    """Both the patcher and LoraLoaderModelOnly only clone and add patches, so their order does not matter; the
    LoRA really applies (every key maps, the image changes) and strength 0 gives the image without the LoRA."""
    common = dict(seed=4, **SIZE)
    regional, _ = image(comfy_server, graphs.regional_flux(**common))
    before, result = image(comfy_server, graphs.regional_flux(lora=1.0, **common))
    assert "lora" in result.executed_nodes
    after, _ = image(comfy_server, graphs.regional_flux(lora=1.0, lora_after_patch=True, **common))
    assert np.array_equal(before, after)
    assert mean_diff(before, regional) > 2.0, "the LoRA changed (almost) nothing"
    # ComfyUI's LoraLoaderModelOnly hands the model on unchanged at strength 0 (the in-process test below adds the
    # patches at strength 0 for real).
    zero, _ = image(comfy_server, graphs.regional_flux(lora=0.0, **common))
    assert np.array_equal(zero, regional)
    log = comfy_server.log_text()
    assert "lora key not loaded" not in log and "ERROR lora" not in log, log[-3000:]


@pytest.mark.server
def test_controlnet_with_regional_flux(comfy_server):
    """Regional FLUX + an XLabs ControlNet (ControlNetApplyAdvanced, strength 1) runs, is deterministic and
    differs from regional FLUX alone; ComfyUI loads every key of the ControlNet file."""
    common = dict(seed=5, **SIZE)
    regional, _ = image(comfy_server, graphs.regional_flux(**common))
    controlled, result = image(comfy_server, graphs.regional_flux(controlnet=1.0, **common))
    assert "controlnet" in result.executed_nodes
    assert mean_diff(controlled, regional) > 2.0, "the ControlNet changed (almost) nothing"
    # Same conditioning (a trailing space tokenizes the same), new cache key: the sampler really runs again.
    base = graphs.regional_flux.__kwdefaults__["base_prompt"]
    again, result = image(comfy_server, graphs.regional_flux(controlnet=1.0, base_prompt=base + " ", **common))
    assert "sampler" in result.executed_nodes
    assert np.array_equal(again, controlled)
    other_hint, _ = image(comfy_server, graphs.regional_flux(controlnet=1.0, hint_color=0xE0E0E0, **common))
    assert mean_diff(other_hint, controlled) > 0, "the hint image has no effect"
    assert "missing controlnet keys" not in comfy_server.log_text()


@pytest.mark.server
def test_schnell(comfy_server):
    """FLUX.1 schnell (no guidance embedding; FluxGuidance is then ignored): regional prompting changes the
    image, base_ratio 1 gives plain schnell bit for bit, and a moved region changes the output."""
    common = dict(seed=6, unet=graphs.FLUX_SCHNELL_UNET, **SIZE)
    plain, _ = image(comfy_server, graphs.regional_flux(patch=False, **common))
    regional, _ = image(comfy_server, graphs.regional_flux(**common))
    assert mean_diff(regional, plain) > 0, "regional prompting changed nothing on schnell"
    off, _ = image(comfy_server, graphs.regional_flux(base_ratio=1.0, **common))
    assert np.array_equal(off, plain)
    moved, _ = image(comfy_server, graphs.regional_flux(boxes=MOVED, **common))
    assert mean_diff(moved, regional) > 0, "moving the regions changed nothing"


# ---------------------------------------------------------------------------------------------------------
# In process: what the ControlNet and the diffusion model receive


@pytest.fixture(scope="module")
def flux_parts(comfy_models):
    """(model, clip, controlnet) from ComfyUI's own loader nodes, and its nodes module."""
    import folder_paths
    import nodes

    for key in ("loras", "controlnet"):
        folder_paths.add_model_folder_path(key, str(comfy_models / key))
    model = nodes.UNETLoader().load_unet(graphs.FLUX_UNET, "default")[0]
    clip = nodes.CLIPLoader().load_clip(graphs.CLIP_L, type="sd3")[0]
    controlnet = nodes.ControlNetLoader().load_controlnet(graphs.FLUX_CONTROLNET)[0]
    yield model, clip, controlnet, nodes
    import comfy.model_management

    comfy.model_management.unload_all_models()  # do not keep ~3 GB of weights for the rest of the session


def regional_parts(clip, width: int, height: int, base_prompt="a still life on a wooden table"):
    """(base conditioning, regional conditioning) from the pack's own nodes: two boxes and a background."""
    from regional_layout.nodes.regional_prompt_encode import RegionalPromptEncode
    from regional_layout.nodes.regions_from_masks import RegionsFromMasks

    masks = torch.zeros(2, height, width)
    masks[0, :, : width // 2] = 1
    masks[1, : height // 2, width // 2 :] = 1
    layout = RegionsFromMasks.execute(
        masks, "\n".join(graphs.REGION_PROMPTS), width, height, base_prompt, "a photo", 0.0
    ).args[0]
    base, regional = RegionalPromptEncode.execute(clip, layout).args
    return base, regional


def patch(model, regional, base_ratio=0.2):
    from regional_layout.nodes.regional_flux_patch import RegionalFluxPatch

    return RegionalFluxPatch.execute(model, regional, base_ratio, 10, "all", "all", 0.0).args[0]


def sample(model, positive, negative, width: int, height: int, steps=1, seed=0):
    import comfy.sample

    latent = torch.zeros(1, 16, height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", positive, negative, latent, seed=seed)


def guided(conditioning):
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, {"guidance": 3.5})  # what FluxGuidance does


def test_controlnet_sees_only_the_base_prompt(flux_parts):
    """The ControlNet runs in ComfyUI's calc_cond_batch, outside the pack's DIFFUSION_MODEL wrapper: it receives
    exactly the base prompt's tokens, while the diffusion model receives base + region tokens; the regional
    attention override is called once per diffusion-model block and never for the ControlNet's attention."""
    model, clip, controlnet, nodes = flux_parts
    width, height = SIZE["width"], SIZE["height"]
    base, regional = regional_parts(clip, width, height)
    positive = guided(base)
    negative = nodes.ConditioningZeroOut().zero_out(positive)[0]
    hint = torch.linspace(0, 1, width).expand(1, height, width).unsqueeze(-1).expand(1, height, width, 3)
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, controlnet, hint.contiguous(), 1.0, 0.0, 1.0
    )
    patched = patch(model, regional)

    flux = patched.get_model_object("diffusion_model")
    control_model = positive[0][1]["control"].control_model
    seen: dict[str, list] = {"controlnet": [], "controlnet_blocks": [], "flux": [], "overrides": []}

    def on_control(module, args, kwargs):
        seen["controlnet"].append(kwargs["context"].detach().clone())

    def on_control_block(module, args, kwargs):
        seen["controlnet_blocks"].append(kwargs.get("transformer_options", {}))

    def on_txt_in(module, args):
        seen["flux"].append(args[0].detach().clone())

    def on_flux_block(module, args, kwargs):
        override = kwargs["transformer_options"].get("optimized_attention_override")
        if override is not None and all(override is not o for o in seen["overrides"]):
            seen["overrides"].append(override)

    handles = [
        control_model.register_forward_pre_hook(on_control, with_kwargs=True),
        flux.txt_in.register_forward_pre_hook(on_txt_in),
    ]
    handles += [b.register_forward_pre_hook(on_control_block, with_kwargs=True) for b in control_model.double_blocks]
    handles += [
        b.register_forward_pre_hook(on_flux_block, with_kwargs=True) for b in (*flux.double_blocks, *flux.single_blocks)
    ]
    try:
        steps = 2
        sample(patched, positive, negative, width, height, steps=steps)
    finally:
        for handle in handles:
            handle.remove()

    base_tokens = base[0][0]
    texts = torch.cat([*regional.embeds, regional.background], dim=1)
    assert len(seen["controlnet"]) == len(seen["flux"]) == steps  # cfg 1: one positive call per step
    for context in seen["controlnet"]:
        assert context.shape == base_tokens.shape
        assert torch.equal(context, base_tokens.to(context.dtype))
    for context in seen["flux"]:
        assert context.shape[1] == base_tokens.shape[1] + texts.shape[1] > base_tokens.shape[1]
        assert torch.equal(context[:, texts.shape[1] :], base_tokens.to(context.dtype))
        assert torch.equal(context[:, : texts.shape[1]], texts.to(context.dtype))
    # The ControlNet's blocks get no transformer_options (so no attention override can reach them) ...
    assert seen["controlnet_blocks"] and all(
        not opts.get("optimized_attention_override") for opts in seen["controlnet_blocks"]
    )
    # ... and each call's regional override ran exactly once per block of the diffusion model.
    blocks = [("double", i) for i in range(len(flux.double_blocks))] + [
        ("single", i) for i in range(len(flux.single_blocks))
    ]
    assert len(seen["overrides"]) == steps
    for override in seen["overrides"]:
        assert override.calls == blocks


def test_lora_patches_map_and_strength_zero_is_exact(flux_parts, caplog):
    """Every key of the tiny LoRA maps onto FLUX (no 'lora key not loaded'); with its patches really added at
    strength 0 the regional result is bit-identical to no LoRA, and at strength 1 it differs."""
    import comfy.lora
    import comfy.lora_convert
    import comfy.utils
    import folder_paths
    from rl_devkit.tiny_models import FLUX_LORA_LAYERS

    model, clip, _, nodes = flux_parts
    width, height = SIZE["width"], SIZE["height"]
    lora = comfy.lora_convert.convert_lora(
        comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("loras", graphs.FLUX_LORA), safe_load=True)
    )
    with caplog.at_level(logging.WARNING):
        loaded = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(model.model, {}))
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert sorted(loaded) == sorted(f"diffusion_model.{layer}.weight" for layer in FLUX_LORA_LAYERS)

    base, regional = regional_parts(clip, width, height)
    positive = guided(base)
    negative = nodes.ConditioningZeroOut().zero_out(positive)[0]
    outputs = {}
    for name, strength in (("none", None), ("zero", 0.0), ("one", 1.0)):
        lora_model = model
        if strength is not None:
            lora_model = model.clone()
            assert sorted(lora_model.add_patches(loaded, strength)) == sorted(loaded)
        outputs[name] = sample(patch(lora_model, regional), positive, negative, width, height)
    assert torch.equal(outputs["zero"], outputs["none"])
    assert (outputs["one"] - outputs["none"]).abs().mean() > 0.05
