"""Regional LoRA: a LoRA on one region of a regionally patched FLUX.1 / Chroma / Qwen-Image model, in the same
sampling pass.

ComfyUI's own LoRA machinery reads the file and maps its keys (comfy.lora.model_lora_keys_unet + load_lora, as
LoraLoaderModelOnly does); this adapter turns the mapped low-rank patches into per-row updates
(attention_patches/regional_lora.py) and installs them as object patches of the Linear layers on a clone.
"""

from __future__ import annotations

import logging
import math

from comfy_api.latest import io

from ..attention_patches.families import FAMILIES, FLUX1, ModelFamily
from ..attention_patches.flux_patch import PATCH_KEY, WRAPPER_POINTS
from ..attention_patches.regional_lora import (
    LowRankUpdate,
    RegionalLoraLinear,
    RegionalLoraState,
    RegionalLoraWrapper,
    plain_linear_updates,
    regional_linear,
    stream_of,
)
from .regional_flux_patch import model_family
from .types import CATEGORY

NODE = "Regional LoRA"
LORA_KEY = "regional_layout.regional_lora"
PREFIX = "diffusion_model."


def region_row(cond, region: str) -> int:
    """The plan row of `region`: a 1-based index among the encoded regions, a region's name, or "background"."""
    names = [r.name for r in cond.layout.regions]
    text = str(region).strip()
    if text.isdigit() and 1 <= int(text) <= len(names):
        return int(text) - 1
    for i, name in enumerate(names):
        if name and name.strip().lower() == text.lower():
            return i
    if text.lower() == "background" and cond.background is not None:
        return len(names)
    shown = ", ".join(f"{i + 1} ({n})" if n else str(i + 1) for i, n in enumerate(names))
    background = ", background" if cond.background is not None else ""
    raise ValueError(
        f"{NODE}: region {region!r} is not a region of the layout; use an index or a name among: "
        f"{shown}{background} (regions without a prompt or mask are not counted)"
    )


def lora_updates(
    patches: dict, row: int, strength: float, lora_name: str, diffusion_model, family: ModelFamily = FLUX1
):
    """{layer path: [LowRankUpdate]} of the patches comfy.lora.load_lora made for `family`'s `diffusion_model`, and
    the layers left out (per-sample layers, which have no token rows). Refuses what is not a plain low-rank LoRA,
    naming the file."""
    from comfy.weight_adapter.lora import LoRAAdapter

    updates: dict[str, list[LowRankUpdate]] = {}
    skipped = []
    modules = dict(diffusion_model.named_modules())
    for key, patch in patches.items():
        name, offset, function = (key, None, None) if isinstance(key, str) else (key[0], key[1], (key + (None,))[2])
        if not name.startswith(PREFIX):
            continue
        layer, _, param = name[len(PREFIX) :].rpartition(".")
        stream = stream_of(layer, family)
        if stream is None:
            skipped.append(layer)
            continue
        weights = getattr(patch, "weights", None)
        if (
            not isinstance(patch, LoRAAdapter)
            or param != "weight"
            or function is not None
            or any(w is not None for w in weights[3:])
        ):
            kind = type(patch).__name__ if not isinstance(patch, tuple) else f"'{patch[0]}' patch"
            raise ValueError(
                f"{NODE}: lora_name {lora_name!r} holds a {kind} for {layer}.{param}; Regional LoRA "
                "applies plain low-rank LoRA (no DoRA, LoHa, LoKr or full-weight diffs): load this "
                "one for the whole model with LoraLoaderModelOnly"
            )
        up, down, alpha = weights[0].flatten(1), weights[1].flatten(1), weights[2]
        scale = strength * (alpha / down.shape[0] if alpha is not None else 1.0)
        out_slice = in_slice = None
        if offset is not None:
            dim, start, length = offset
            if dim == 0:
                out_slice = (start, length)
            else:
                in_slice = (start, length)
        update = LowRankUpdate(row, down, up, scale, out_slice, in_slice, source=f"{lora_name}: {layer}")
        linear = modules.get(layer)
        weight = getattr(linear, "weight", None)
        if weight is None or weight.ndim != 2 or not update.fits(weight.shape[1], weight.shape[0]):
            raise ValueError(
                f"{NODE}: lora_name {lora_name!r} does not fit the model: its {layer} is "
                f"{tuple(up.shape[:1]) + tuple(down.shape[1:])}, the model's is "
                f"{tuple(weight.shape) if weight is not None else 'missing'} (a LoRA for another "
                "model or size)"
            )
        updates.setdefault(layer, []).append(update)
    return updates, skipped


def apply_regional_lora(model, updates: dict[str, list[LowRankUpdate]], family, regional):
    """A clone of `model` with every regional LoRA update (earlier nodes' and `updates`) as object patches of
    the Linear layers, all bound to one new state, and the wrapper that sets it. `model` is not changed."""
    patched = model.clone()
    combined: dict[str, list[LowRankUpdate]] = {}
    for path, obj in patched.object_patches.items():
        if path.startswith(PREFIX) and isinstance(obj, RegionalLoraLinear):
            combined[path[len(PREFIX) :]] = list(plain_linear_updates(obj))
    for layer, ups in updates.items():
        combined.setdefault(layer, []).extend(ups)
    state = RegionalLoraState()
    for layer, ups in combined.items():
        base = patched.get_model_object(PREFIX + layer)
        patched.add_object_patch(PREFIX + layer, regional_linear(base, tuple(ups), stream_of(layer, family), state))
    patched.remove_wrappers_with_key("diffusion_model", LORA_KEY)
    patched.add_wrapper_with_key("diffusion_model", LORA_KEY, RegionalLoraWrapper(regional, state, family))
    return patched


def regional_wrapper(model):
    wrappers = [w for point in WRAPPER_POINTS for w in model.get_wrappers(point, PATCH_KEY)]  # SD3: apply_model
    if not wrappers:
        raise ValueError(
            f"{NODE}: model is not regionally patched; connect the model output of Regional FLUX "
            "Patch (with base_ratio below 1, control_steps above 0 and some blocks selected)"
        )
    return wrappers[-1]


def load_regional_lora(model, lora_name: str, strength: float, region: str):
    import comfy.lora
    import comfy.lora_convert
    import comfy.utils
    import folder_paths

    if not (isinstance(strength, (int, float)) and math.isfinite(strength)):
        raise ValueError(f"{NODE}: strength_model must be a finite number, got {strength!r}")
    regional = regional_wrapper(model)
    try:
        family, diffusion_model = model_family(model)
    except ValueError as err:
        raise ValueError(f"{NODE}: {str(err).split(': ', 1)[1]}") from None
    if not family.lora_streams:  # which layers see which token rows: families.py
        covered = ", ".join(f.name for f in FAMILIES.values() if f.lora_streams)
        raise ValueError(
            f"{NODE}: model is {family.name}; Regional LoRA supports {covered} so far (load this LoRA for "
            "the whole model with LoraLoaderModelOnly)"
        )
    row = region_row(regional.cond, region)
    path = folder_paths.get_full_path("loras", lora_name) if isinstance(lora_name, str) else None
    if path is None:
        raise ValueError(f"{NODE}: lora_name {lora_name!r} is not in ComfyUI's loras folder")
    try:
        lora = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as err:  # noqa: BLE001 - any reading error: name the input
        raise ValueError(f"{NODE}: lora_name {lora_name!r} cannot be read as a LoRA ({err})") from None
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map, log_missing=False)  # as LoraLoader
    updates, skipped = lora_updates(patches, row, float(strength), lora_name, diffusion_model, family)
    if not updates:
        raise ValueError(
            f"{NODE}: lora_name {lora_name!r} does not fit the model: none of its keys maps onto a "
            f"{family.name} layer with token rows (a LoRA for another model family, or only for the "
            "text encoder?)"
        )
    if skipped:
        logging.warning(
            "%s: %s: %d per-sample layers (modulations, embedders) cannot be regional and are left out: %s",
            NODE,
            lora_name,
            len(skipped),
            ", ".join(sorted(skipped)[:6]),
        )
    if strength == 0:
        updates = {}  # nothing to add: bit-identical to no regional LoRA
    return apply_regional_lora(model, updates, family, regional)


class RegionalLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="RL_RegionalLora",
            display_name="Regional LoRA",
            category=f"{CATEGORY}/flux",
            description="Applies a LoRA to one region only, in the same sampling pass: its update reaches that "
            "region's image tokens (scaled by a soft mask) and its own prompt tokens, never the base "
            "prompt, the other regions, the background or the negative prompt. It applies in every "
            "step and block (the LoRA is about content). Chain one node per LoRA and region; a LoRA "
            "loaded the usual way before the patch stays global. Plain low-rank LoRA only; its "
            "modulation layers (per image, not per token) are left out.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The model output of Regional FLUX Patch (or of another Regional "
                    "LoRA): the regions come from its patch.",
                ),
                io.Combo.Input(
                    "lora_name",
                    options=folder_paths.get_filename_list("loras"),
                    tooltip="A FLUX.1, Chroma, FLUX.2 or Qwen-Image LoRA from ComfyUI's loras folder (any "
                    "format LoraLoader reads for this model).",
                ),
                io.Float.Input(
                    "strength_model",
                    default=1.0,
                    min=-100.0,
                    max=100.0,
                    step=0.01,
                    tooltip="How strongly the LoRA changes its region (as LoraLoader's strength; 0 changes nothing).",
                ),
                io.String.Input(
                    "region",
                    default="1",
                    tooltip="Which region gets the LoRA: its number (1 = the first region with a "
                    "prompt and a mask), its name, or 'background'.",
                ),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="A copy of the model with the regional LoRA.")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model, region) -> io.NodeOutput:
        return io.NodeOutput(load_regional_lora(model, lora_name, strength_model, region))
