"""Patch a FLUX.1 or Chroma model for regional prompting (region-aware attention in the chosen blocks and steps)."""

from comfy_api.latest import io

from ..attention_patches.families import CHROMA, FAMILIES, FLUX1, ModelFamily
from ..attention_patches.flux_patch import RegionalFluxOptions, apply_regional_flux, parse_blocks
from .checks import finite, prefix_errors
from .types import CATEGORY, RegionalCond


def model_family(model) -> tuple[ModelFamily, object]:
    """The family and diffusion model inside a ModelPatcher, or a ValueError naming the input and what works."""
    from comfy.ldm.chroma.model import Chroma
    from comfy.ldm.flux.model import Flux

    diffusion_model = model.get_model_object("diffusion_model")
    if type(diffusion_model) is Flux and len(diffusion_model.params.axes_dim) == 3:  # FLUX.2 has 4 RoPE axes
        return FLUX1, diffusion_model
    if type(diffusion_model) is Chroma:  # not Chroma Radiance (pixel space)
        return CHROMA, diffusion_model
    supported = ", ".join(f.name for f in FAMILIES.values())
    raise ValueError(f"Regional FLUX Patch: model is {type(diffusion_model).__name__}, which regional prompting does "
                     f"not support yet; connect a model of one of these families: {supported} (UNETLoader)")


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
                io.Model.Input("model", tooltip="A FLUX.1 (dev, schnell, Krea-dev) or Chroma model (LoRAs may be "
                                                "applied before)."),
                RegionalCond.Input("regional_cond", tooltip="From Regional Prompt Encode (FLUX)."),
                io.Float.Input("base_ratio", default=0.2, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of the base prompt in the image attention (beta): smaller means "
                                       "stronger regions, 1 turns regions off, 0 is also the fastest (no base "
                                       "attention for the image). Paper: 0.1-0.3."),
                io.Int.Input("control_steps", default=10, min=0, max=10000,
                             tooltip="How many of the first sampling steps are regional (a step count; later "
                                     "steps are plain FLUX). Paper: 5-10 of 24; more means stronger regions."),
                io.String.Input("double_blocks", default="all",
                                tooltip="Double-stream blocks that are masked: 'all', 'none', 'every 2' or a list "
                                        "like '0-7,12' (FLUX.1 has 19, numbered from 0). In the other blocks the "
                                        "region prompts still take part, without the mask (the paper's code)."),
                io.String.Input("single_blocks", default="all",
                                tooltip="Single-stream blocks that are masked: 'all', 'none', 'every 2' or a list "
                                        "like '0-37' (FLUX.1 has 38, numbered from 0). In the other blocks the "
                                        "region prompts still take part, without the mask (the paper's code)."),
                io.Float.Input("feather", default=0.0, min=0.0, max=256.0, step=1.0,
                               tooltip="Soften every region's edge by this many pixels (uses the exact dense "
                                       "attention path, which is slower)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched copy of the model.")],
        )

    @classmethod
    def execute(cls, model, regional_cond, base_ratio, control_steps, double_blocks, single_blocks,
                feather) -> io.NodeOutput:
        finite("Regional FLUX Patch", "base_ratio", base_ratio, 0.0, 1.0)
        finite("Regional FLUX Patch", "feather", feather, 0.0, 256.0)
        family, diffusion_model = model_family(model)
        if regional_cond.width != diffusion_model.params.context_in_dim:
            raise ValueError(f"Regional FLUX Patch: regional_cond is {regional_cond.width} wide, the model expects "
                             f"{diffusion_model.params.context_in_dim}: encode the regions with the {family.name} text "
                             f"encoder ({family.text_encoder_hint})")
        with prefix_errors("Regional FLUX Patch"):
            options = RegionalFluxOptions(
                beta=float(base_ratio), control_steps=int(control_steps),
                double_blocks=parse_blocks(double_blocks, len(diffusion_model.double_blocks), "double_blocks"),
                single_blocks=parse_blocks(single_blocks, len(diffusion_model.single_blocks), "single_blocks"),
                feather=float(feather))
        return io.NodeOutput(apply_regional_flux(model, regional_cond, options, family))
