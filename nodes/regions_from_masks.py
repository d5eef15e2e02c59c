"""Regions from a MASK batch and one prompt per line."""

from comfy_api.latest import io

from ..layout.from_masks import layout_from_masks, split_prompts
from .checks import finite, prefix_errors
from .types import CATEGORY, Regions, layout_inputs


class RegionsFromMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RL_RegionsFromMasks",
            display_name="Regions From Masks",
            category=f"{CATEGORY}/layout",
            description="Turns a batch of masks into regions, one prompt per line, for both regional methods.",
            inputs=[
                io.Mask.Input("masks", tooltip="One mask per region (a MASK batch); white is inside the region."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="One prompt per line, in the order of the masks."),
                *layout_inputs(width_tip="Width of the picture the layout describes, in pixels; masks are resized "
                                         "to it.",
                               background_tip="Prompt for the area no mask covers (a region of its own)."),
                io.Float.Input("feather", default=0.0, min=0.0, max=256.0, step=1.0,
                               tooltip="Soften every region's edge by this many pixels (0 keeps hard edges)."),
            ],
            outputs=[Regions.Output(display_name="regions", tooltip="Masks, prompts and boxes of every region.")],
        )

    @classmethod
    def execute(cls, masks, prompts, width, height, base_prompt, background_prompt, feather) -> io.NodeOutput:
        finite("Regions From Masks", "feather", feather, 0.0, 256.0)
        with prefix_errors("Regions From Masks"):
            layout = layout_from_masks(masks, split_prompts(prompts), width=width, height=height,
                                       base_prompt=base_prompt, background_prompt=background_prompt, feather=feather)
        return io.NodeOutput(layout)
