"""Custom socket types shared by the pack's nodes."""

from comfy_api.latest import io

# A layout.regions.RegionLayout: masks + prompts (+ each region's box) at one pixel size.
Regions = io.Custom("RL_REGIONS")

CATEGORY = "regional_layout"

# An attention_patches.regional_cond.RegionalConditioning: per-region T5 embeddings (real tokens) and masks.
RegionalCond = io.Custom("RL_REGIONAL_COND")
# A guidance.trajectory.Trajectory: the reference latents z_bar(sigma) that backward guidance pulls toward.
Trajectory = io.Custom("RL_TRAJECTORY")


# What the official Regional Prompting FLUX code does when the masks leave pixels uncovered: a background region
# with this prompt over the rest (infer_flux_regional.py).
BACKGROUND_DEFAULT = "a photo"
BACKGROUND_EFFECT = (
    " Default 'a photo', as the paper's code does. Empty: no background region; the uncovered "
    "image then attends only to itself in regional attention, and to the base prompt only through "
    "base_ratio."
)


def layout_inputs(*, width_tip: str, background_tip: str, background_default: str = BACKGROUND_DEFAULT) -> list:
    """width, height, base_prompt, background_prompt: the inputs every layout-making node shares, in this order
    (saved workflows store widget values by position: never reorder)."""
    return [
        io.Int.Input("width", default=1024, min=16, max=16384, step=8, tooltip=width_tip),
        io.Int.Input(
            "height",
            default=1024,
            min=16,
            max=16384,
            step=8,
            tooltip="Height of the picture the layout describes, in pixels.",
        ),
        io.String.Input("base_prompt", multiline=True, default="", tooltip="The prompt for the whole picture."),
        io.String.Input("background_prompt", default=background_default, tooltip=background_tip + BACKGROUND_EFFECT),
    ]
