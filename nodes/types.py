"""Custom socket types shared by the pack's nodes."""

from comfy_api.latest import io

# A layout.regions.RegionLayout: masks + prompts (+ each region's box) at one pixel size.
Regions = io.Custom("RL_REGIONS")

CATEGORY = "regional_layout"

# An attention_patches.regional_cond.RegionalConditioning: per-region T5 embeddings (real tokens) and masks.
RegionalCond = io.Custom("RL_REGIONAL_COND")
# A guidance.trajectory.Trajectory: the reference latents z_bar(sigma) that backward guidance pulls toward.
Trajectory = io.Custom("RL_TRAJECTORY")
