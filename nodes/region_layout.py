"""The region layout node: regions drawn in the node's canvas editor, or given as layout JSON."""

from comfy_api.latest import io

from ..layout.editor_state import build_layout, feathered_masks, layout_preview, parse_layout_json
from .types import CATEGORY, Regions

EMPTY_STATE = '{"version": 1, "regions": []}'


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
                io.Int.Input("width", default=1024, min=16, max=16384, step=8,
                             tooltip="Width of the picture the layout describes, in pixels."),
                io.Int.Input("height", default=1024, min=16, max=16384, step=8,
                             tooltip="Height of the picture the layout describes, in pixels."),
                io.String.Input("base_prompt", multiline=True, default="",
                                tooltip="The prompt for the whole picture."),
                io.String.Input("background_prompt", default="",
                                tooltip="Prompt for the area no region covers; empty means no background region."),
                io.String.Input("editor_state", default=EMPTY_STATE, socketless=True,
                                tooltip="The editor's drawing as versioned JSON (written by the canvas; scripts "
                                        "may set it through the API). Schema: layout/editor_state.py."),
                io.String.Input("layout_json", optional=True, force_input=True,
                                tooltip="Optional layout JSON (e.g. from an LLM planner) that replaces the editor's "
                                        "drawing: {width, height, base_prompt, background_prompt, regions: [{prompt, "
                                        "box: [x, y, w, h] in pixels or 0-1, mask?}]}."),
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
                layout_json=None) -> io.NodeOutput:
        name, text = ("layout_json", layout_json) if layout_json and layout_json.strip() else ("editor_state",
                                                                                              editor_state)
        try:
            spec = parse_layout_json(text, input_name=name)
        except ValueError as err:
            raise ValueError(f"Region Layout: {err}") from None
        if name == "layout_json":
            width, height = spec.width or width, spec.height or height
        layout = build_layout(spec, width, height, base_prompt, background_prompt)
        masks = feathered_masks(layout) if layout.regions else layout.masks().new_zeros(1, height, width)
        return io.NodeOutput(layout, masks, layout_preview(layout))
