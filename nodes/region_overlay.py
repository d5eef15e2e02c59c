"""Preview where each region lies, as a colour tint over an image."""

from comfy_api.latest import io

from ..layout.overlay import overlay_regions
from .checks import finite
from .types import CATEGORY, Regions


class RegionOverlay(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RL_RegionOverlay",
            display_name="Region Overlay",
            category=f"{CATEGORY}/layout",
            description="Tints an image with one colour per region, to check the layout against the result.",
            inputs=[
                io.Image.Input("image", tooltip="The picture to tint (any size: the masks are resized to it)."),
                Regions.Input("regions", tooltip="The regions to show."),
                io.Float.Input(
                    "opacity",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="How strongly the region colours cover the image (0 shows the image only).",
                ),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The tinted picture.")],
        )

    @classmethod
    def execute(cls, image, regions, opacity) -> io.NodeOutput:
        finite("Region Overlay", "opacity", opacity, 0.0, 1.0)
        return io.NodeOutput(overlay_regions(image, regions, opacity))
