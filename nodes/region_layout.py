"""The region layout node: regions drawn in the node's canvas editor, or given as layout JSON."""

import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..layout.color_map import layout_from_color_map
from ..layout.feather import feathered_masks
from ..layout.from_masks import split_prompts
from ..layout.layout_json import parse_layout_json
from ..layout.overlay import layout_preview
from ..layout.rasterize import build_layout
from .checks import prefix_errors
from .types import CATEGORY, Regions, layout_inputs

EMPTY_STATE = '{"version": 1, "regions": []}'
BACKDROP_SIDE = 512  # the editor's backdrop preview is downscaled to this many pixels on its long side


class RegionLayoutNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RL_RegionLayout",
            display_name="Region Layout (Editor)",
            category=f"{CATEGORY}/layout",
            description="Draw regions (rectangles, brush strokes) with a prompt each in the node's canvas, or pass "
                        "a layout JSON; gives the regions both regional methods consume, their masks and a preview.",
            inputs=[
                *layout_inputs(width_tip="Width of the picture the layout describes, in pixels.",
                               background_tip="Prompt for the area no region covers (a region of its own)."),
                io.String.Input("editor_state", default=EMPTY_STATE, socketless=True,
                                tooltip="The editor's drawing as versioned JSON (written by the canvas; scripts "
                                        "may set it through the API). Schema: layout/layout_json.py."),
                io.String.Input("layout_json", optional=True, force_input=True,
                                tooltip="Optional layout JSON (e.g. from an LLM planner) that replaces the editor's "
                                        "drawing: {width, height, base_prompt, background_prompt, regions: [{prompt, "
                                        "box: [x, y, w, h] in pixels or 0-1, mask?}]}."),
                io.Image.Input("backdrop", optional=True,
                               tooltip="Optional picture shown behind the regions in the editor once the node has "
                                       "run (display only; it does not change the masks)."),
            ],
            outputs=[
                Regions.Output(display_name="regions", tooltip="Masks, prompts and boxes of every region."),
                io.Mask.Output(display_name="masks",
                               tooltip="One mask per region, feathered (one empty mask when there is none)."),
                io.Image.Output(display_name="preview", tooltip="The regions colour-coded over grey."),
            ],
        )

    @classmethod
    def execute(cls, width, height, base_prompt, background_prompt, editor_state,
                layout_json=None, backdrop=None) -> io.NodeOutput:
        name, text = ("layout_json", layout_json) if layout_json and layout_json.strip() else ("editor_state",
                                                                                              editor_state)
        with prefix_errors("Region Layout"):
            spec = parse_layout_json(text, input_name=name, default_size=(width, height))
            if name == "layout_json":
                width, height = spec.width or width, spec.height or height
            layout = build_layout(spec, width, height, base_prompt, background_prompt)
        outputs = layout_outputs(layout)
        if backdrop is not None:
            outputs.ui = {"rl_backdrop": save_backdrop(backdrop)}
        return outputs


def save_backdrop(image) -> list[dict]:
    """The first picture, downscaled, as a temp PNG the editor loads through /view."""
    picture = image[:1].movedim(-1, 1)
    scale = BACKDROP_SIDE / max(picture.shape[-2:])
    if scale < 1:
        picture = F.interpolate(picture, scale_factor=scale, mode="area")
    return ui.ImageSaveHelper.save_images(picture.movedim(1, -1), "rl_backdrop", io.FolderType.temp, None,
                                          compress_level=1)


def layout_outputs(layout) -> io.NodeOutput:
    """regions, feathered MASK batch (one empty mask when there is no region), colour preview."""
    masks = feathered_masks(layout) if layout.regions else layout.masks().new_zeros(1, layout.height, layout.width)
    return io.NodeOutput(layout, masks, layout_preview(layout))


class RegionsFromColorMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RL_RegionsFromColorMap",
            display_name="Regions From Color Map",
            category=f"{CATEGORY}/layout",
            description="One region per distinct colour of a segmentation image (black is background), with one "
                        "prompt per line in the order the colours first appear (left to right, top to bottom).",
            inputs=[
                io.Image.Input("color_map", tooltip="A colour-coded segmentation image; use PNG (JPEG adds colours)."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="One prompt per line, one per colour, in reading order of the colours."),
                io.Int.Input("tolerance", default=16, min=0, max=128,
                             tooltip="Colours this close (0-255 per channel) to a region's colour join it."),
                *layout_inputs(width_tip="Width of the picture the layout describes; the map is resized to it.",
                               background_tip="Prompt for the black (uncovered) area (a region of its own)."),
            ],
            outputs=[
                Regions.Output(display_name="regions", tooltip="Masks, prompts and boxes of every region."),
                io.Mask.Output(display_name="masks", tooltip="One mask per region."),
                io.Image.Output(display_name="preview", tooltip="The regions colour-coded over grey."),
            ],
        )

    @classmethod
    def execute(cls, color_map, prompts, tolerance, width, height, base_prompt, background_prompt) -> io.NodeOutput:
        with prefix_errors("Regions From Color Map"):
            layout = layout_from_color_map(color_map, split_prompts(prompts), width=width, height=height,
                                           tolerance=tolerance, base_prompt=base_prompt,
                                           background_prompt=background_prompt)
        return layout_outputs(layout)
