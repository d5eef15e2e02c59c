"""Encode a region layout for Regional FLUX: the base prompt as ordinary conditioning, every region's prompt
with its real tokens only (SD3: with its padding, see regional_cond.keeps_padding)."""

from comfy_api.latest import io

from ..attention_patches.regional_cond import encode_regions
from .checks import prefix_errors
from .types import CATEGORY, RegionalCond, Regions


class RegionalPromptEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RL_RegionalPromptEncode",
            display_name="Regional Prompt Encode (FLUX)",
            category=f"{CATEGORY}/flux",
            description="Encodes the layout's base prompt (for the sampler) and each region's prompt (for the "
            "Regional FLUX Patch) with the FLUX text encoder. Each region's prompt is encoded as that prompt "
            "alone (padded as ComfyUI pads it for FLUX), then keeps its real T5 tokens (SD3: its whole padded "
            "conditioning, which the model attends over), so regions never "
            "change each other's embeddings; regions without a prompt or with an empty mask are "
            "skipped with a warning.",
            inputs=[
                io.Clip.Input("clip", tooltip="The FLUX text encoders (DualCLIPLoader, type flux)."),
                Regions.Input(
                    "regions",
                    tooltip="Masks and prompts of the regions, with the base prompt and the "
                    "background prompt (e.g. from Regions From Masks).",
                ),
            ],
            outputs=[
                io.Conditioning.Output(
                    display_name="conditioning",
                    tooltip="The base prompt, encoded like CLIP Text Encode: the positive input "
                    "of the sampler (add FluxGuidance as usual).",
                ),
                RegionalCond.Output(
                    display_name="regional_cond", tooltip="Region embeddings and masks, for the Regional FLUX Patch."
                ),
            ],
        )

    @classmethod
    def execute(cls, clip, regions) -> io.NodeOutput:
        if clip is None:
            raise ValueError("Regional Prompt Encode: clip is not connected to a text encoder")
        with prefix_errors("Regional Prompt Encode: regions"):
            regional = encode_regions(clip, regions)
        base = clip.encode_from_tokens_scheduled(clip.tokenize(regions.base_prompt))
        return io.NodeOutput(base, regional)
