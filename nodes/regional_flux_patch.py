"""Patch a FLUX.1, Chroma, Qwen-Image, FLUX.2, LongCat-Image, Z-Image, SD3 / SD3.5 or Krea 2 model for regional prompting (region-aware attention in the chosen
blocks and steps)."""

from comfy_api.latest import io

from ..attention_patches.families import (
    CHROMA,
    FAMILIES,
    FLUX1,
    FLUX2,
    KREA2,
    LONGCAT_IMAGE,
    QWEN_IMAGE,
    SD3,
    ZIMAGE,
    ModelFamily,
)
from ..attention_patches.flux_patch import RegionalFluxOptions, apply_regional_flux, parse_blocks
from .checks import finite, prefix_errors
from .types import CATEGORY, RegionalCond


def model_family(model) -> tuple[ModelFamily, object]:
    """The family and diffusion model inside a ModelPatcher, or a ValueError naming the input and what works."""
    from comfy.ldm.chroma.model import Chroma
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.lumina.model import NextDiT
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    diffusion_model = model.get_model_object("diffusion_model")
    if type(diffusion_model) is Flux and len(diffusion_model.params.axes_dim) == 3:  # FLUX.2 has 4 RoPE axes
        # LongCat-Image / Ovis-Image (newer hosts): FLUX.1's class with text positions counted on some axes
        sequential_text = getattr(diffusion_model.params, "txt_ids_dims", None)
        return (LONGCAT_IMAGE if sequential_text else FLUX1), diffusion_model
    if type(diffusion_model) is Flux and len(diffusion_model.params.axes_dim) == 4:  # FLUX.2 (dev, klein)
        return FLUX2, diffusion_model
    if type(diffusion_model) is Chroma:  # not Chroma Radiance (pixel space)
        return CHROMA, diffusion_model
    if type(diffusion_model) is QwenImageTransformer2DModel:  # Qwen-Image and Qwen-Image-Edit
        return QWEN_IMAGE, diffusion_model
    # Z-Image: the Lumina2 class with caption and image pad tokens (Lumina 2 itself pads nothing)
    if (
        type(diffusion_model) is NextDiT
        and getattr(diffusion_model, "pad_tokens_multiple", None) == ZIMAGE.pad_multiple
    ):
        if getattr(diffusion_model, "siglip_embedder", None) is not None:  # v0.30: reference images in the caption
            raise ValueError(
                "Regional FLUX Patch: model is Z-Image Omni (reference-image tokens among the caption's), which "
                "regional prompting does not support yet; connect Z-Image (Turbo or Base) instead"
            )
        return ZIMAGE, diffusion_model
    if type(diffusion_model) is OpenAISignatureMMDITWrapper and hasattr(diffusion_model, "joint_blocks"):  # SD3, 3.5
        return SD3, diffusion_model
    if _host_class("comfy.ldm.krea2.model", "SingleStreamDiT") is type(diffusion_model):  # newer hosts only
        return KREA2, diffusion_model
    supported = ", ".join(f.name for f in FAMILIES.values())
    raise ValueError(
        f"Regional FLUX Patch: model is {type(diffusion_model).__name__}, which regional prompting does "
        f"not support yet; connect a model of one of these families: {supported} (UNETLoader)"
    )


def _host_class(module: str, name: str):
    """A model class of ComfyUI's that only newer hosts have (Krea 2 since v0.30), or None on this host."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def context_width(diffusion_model, family: ModelFamily = FLUX1) -> int:
    """The text embedding width the model takes (FLUX/Chroma: params.context_in_dim; Z-Image: cap_embedder's
    Linear; others: the input of their text Linear, `family.text_in`)."""
    params = getattr(diffusion_model, "params", None)
    if params is not None and hasattr(params, "context_in_dim"):
        return params.context_in_dim
    if hasattr(diffusion_model, "txtfusion"):  # Krea 2: the encoder's layers side by side per token
        return diffusion_model.txtlayers * diffusion_model.txtdim
    if hasattr(diffusion_model, "cap_embedder"):
        return diffusion_model.cap_embedder[1].in_features
    return getattr(diffusion_model, family.text_in).in_features


def block_sets(family: ModelFamily, diffusion_model, double_blocks: str, single_blocks: str):
    """The chosen double and single blocks; a family without single-stream blocks (Qwen-Image) takes only 'all' or
    'none' there (nothing to choose)."""
    counts = dict(zip(family.block_kinds, family.blocks(diffusion_model)))
    chosen = {}
    for kind, text in (("double", double_blocks), ("single", single_blocks)):
        if kind not in counts:
            if text.strip().lower() not in ("", "all", "*", "none"):
                raise ValueError(f"{kind}_blocks: {family.name} has no {kind}-stream blocks; set it to 'all' or 'none'")
            chosen[kind] = frozenset()
        else:
            chosen[kind] = parse_blocks(text, counts[kind], f"{kind}_blocks")
    return chosen["double"], chosen["single"]


class RegionalFluxPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RL_RegionalFluxPatch",
            display_name="Regional FLUX Patch",
            category=f"{CATEGORY}/flux",
            description="Regional Prompting for FLUX (arXiv 2411.02395): in the chosen blocks of the first "
            "control steps, each region's image follows its own prompt. Works on a copy of the model; "
            "the negative prompt and the other steps run plain FLUX.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="A FLUX.1 (dev, schnell, Krea-dev, Kontext, Fill/Canny/Depth), Chroma, Qwen-Image, FLUX.2, "
                    "LongCat-Image, Z-Image, SD3 / SD3.5 or Krea 2 model (LoRAs may be applied before).",
                ),
                RegionalCond.Input("regional_cond", tooltip="From Regional Prompt Encode (FLUX)."),
                io.Float.Input(
                    "base_ratio",
                    default=0.2,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Share of the base prompt in the image attention (beta): smaller means "
                    "stronger regions, 1 turns regions off, 0 is also the fastest (no base "
                    "attention for the image). Paper: 0.1-0.3.",
                ),
                io.Int.Input(
                    "control_steps",
                    default=10,
                    min=0,
                    max=10000,
                    tooltip="How many of the first sampling steps are regional (a step count; later "
                    "steps are plain FLUX). Paper: 5-10 of 24; more means stronger regions.",
                ),
                io.String.Input(
                    "double_blocks",
                    default="all",
                    tooltip="Double-stream blocks that are masked: 'all', 'none', 'every 2' or a list "
                    "like '0-7,12' (FLUX.1 has 19, FLUX.2 dev 8, Qwen-Image 60, Z-Image 30, SD3.5 Large 38, Medium 24, "
                    "numbered from 0). In the "
                    "other blocks the region prompts still take part, without the mask (the "
                    "paper's code).",
                ),
                io.String.Input(
                    "single_blocks",
                    default="all",
                    tooltip="Single-stream blocks that are masked: 'all', 'none', 'every 2' or a list "
                    "like '0-37' (FLUX.1 has 38, FLUX.2 dev 48, Krea 2 28, numbered from 0; Qwen-Image, Z-Image and SD3 "
                    "have none). In the "
                    "other blocks the region prompts still take part, without the mask (the "
                    "paper's code).",
                ),
                io.Float.Input(
                    "feather",
                    default=0.0,
                    min=0.0,
                    max=256.0,
                    step=1.0,
                    tooltip="Soften every region's edge by this many pixels (uses the exact dense "
                    "attention path, which is slower).",
                ),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched copy of the model.")],
        )

    @classmethod
    def execute(
        cls, model, regional_cond, base_ratio, control_steps, double_blocks, single_blocks, feather
    ) -> io.NodeOutput:
        finite("Regional FLUX Patch", "base_ratio", base_ratio, 0.0, 1.0)
        finite("Regional FLUX Patch", "feather", feather, 0.0, 256.0)
        family, diffusion_model = model_family(model)
        width = context_width(diffusion_model, family)
        if regional_cond.width != width:
            raise ValueError(
                f"Regional FLUX Patch: regional_cond is {regional_cond.width} wide, the model expects "
                f"{width}: encode the regions with the {family.name} text encoder "
                f"({family.text_encoder_hint})"
            )
        with prefix_errors("Regional FLUX Patch"):
            double, single = block_sets(family, diffusion_model, double_blocks, single_blocks)
            options = RegionalFluxOptions(
                beta=float(base_ratio),
                control_steps=int(control_steps),
                double_blocks=double,
                single_blocks=single,
                feather=float(feather),
            )
        return io.NodeOutput(apply_regional_flux(model, regional_cond, options, family))
