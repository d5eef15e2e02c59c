"""LSReGen step 3: KSampler with backward guidance toward the trajectory in its first steps."""

import torch

import comfy.samplers
from comfy_api.latest import io

from ..guidance.backward import DISTANCES, FEATURES, GuidanceSettings
from ..guidance.comfy_sampling import GUIDED_SAMPLERS, GuidancePlan, TrajectoryMismatch, sample
from ..layout.boxes import box_mask, boxes_from_layout
from .checks import finite, prefix_errors, sampler_and_scheduler
from .sampler_inputs import guidance_fraction_input, ksampler_inputs
from .types import CATEGORY, Regions, Trajectory


def layout_mask(regions, latent: torch.Tensor) -> torch.Tensor:
    """(1, 1, h, w): the union of the layout's boxes (each prompted region's mask bounding box, as the GLIGEN prior
    gets them) at the latent's resolution."""
    boxes = boxes_from_layout(regions)
    if not boxes:
        raise ValueError("regions: the layout has no region with a prompt, so the masked feature has no box to keep")
    return box_mask(boxes, *latent.shape[-2:])[None, None]


def fallback_samplers() -> list[str]:
    """The host's samplers that run their guided steps as Euler (all but GUIDED_SAMPLERS)."""
    return [name for name in comfy.samplers.SAMPLER_NAMES if name not in GUIDED_SAMPLERS]


class BackwardGuidanceKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RL_BackwardGuidanceKSampler",
            display_name="Backward Guidance KSampler (LSReGen)",
            category=f"{CATEGORY}/lsregen",
            description="KSampler that, during the first steps, pulls its noisy latent toward the layout prior's "
                        "inverted latents: z <- z - gamma * grad D(feat(z), feat(z_bar)). Works with every sampler "
                        "(some run their guided steps as Euler) and scheduler; with gamma 0 or fraction 0 it is "
                        "exactly KSampler.",
            inputs=[
                io.Model.Input("model", tooltip="The model (SDXL) used for denoising the input latent."),
                *ksampler_inputs(
                    seed="The random seed used for creating the noise.", steps="The number of denoising steps.",
                    cfg="Classifier-free guidance scale.",
                    sampler_name="Any sampler. Its guided steps run inside the sampler, except for these, which run "
                                 "them as Euler (DDIM) steps and then themselves (README, 'Samplers'): "
                                 f"{', '.join(fallback_samplers())}.",
                    scheduler="The scheduler."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (an empty latent of the final size)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="The amount of denoising applied."),
                Trajectory.Input("trajectory", tooltip="Reference latents from Latent Inversion (same model, size)."),
                io.Float.Input("guidance_scale", default=0.2, min=0.0, max=10.0, step=0.01,
                               tooltip="gamma. Distances are SUMS over all latent elements, so gamma means the same "
                                       "at every size: with identity + squared_l2 each update is z <- (1 - 2 gamma) z "
                                       "+ 2 gamma z_bar; (0, 0.5] pulls (0.5 snaps to z_bar, above 0.5 overshoots, "
                                       "above 1 diverges). Small boxes need a larger gamma. 0 = plain KSampler."),
                guidance_fraction_input("Guide the first ceil(fraction x steps) steps (paper: 0.1; more costs "
                                        "quality)."),
                io.Int.Input("guidance_iterations", default=1, min=1, max=100,
                             tooltip="Guidance updates per guided step."),
                io.Combo.Input("feature", options=list(FEATURES), default="identity",
                               tooltip="feat(z): identity (LSReGen), lowpass (4x4 average pool, the layout only) or "
                                       "masked (only inside the layout's boxes, as the GLIGEN prior gets them; "
                                       "needs regions)."),
                io.Combo.Input("distance", options=list(DISTANCES), default="squared_l2",
                               tooltip="D, summed: squared_l2 (LSReGen; closed form with identity), l1 (each "
                                       "element moves by gamma) or cosine (scale-free; 1 - cos per sample)."),
                Regions.Input("regions", optional=True,
                              tooltip="The layout, for the masked feature: its regions' bounding boxes."),
                io.Boolean.Input("start_from_trajectory", default=False, optional=True,
                                 tooltip="Start from the trajectory's latent at the first sigma (the inverted "
                                         "prior) instead of latent_image + fresh noise from the seed; the seed "
                                         "then only drives samplers that add noise (ancestral, SDE)."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The denoised latent.")],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                trajectory, guidance_scale, guidance_fraction, guidance_iterations, feature, distance,
                regions=None, start_from_trajectory=False) -> io.NodeOutput:
        name = "Backward Guidance KSampler"
        finite(name, "guidance_scale", guidance_scale, low=0.0)
        finite(name, "guidance_fraction", guidance_fraction, 0.0, 1.0)
        finite(name, "cfg", cfg, low=0.0)
        finite(name, "denoise", denoise, 0.0, 1.0)
        sampler_and_scheduler(name, sampler_name, scheduler)
        with prefix_errors(name):
            settings = GuidanceSettings(guidance_scale, feature, distance, guidance_iterations)
            if feature == "masked" and regions is None:
                raise ValueError("regions: the masked feature needs the layout's regions connected")
            mask = layout_mask(regions, latent_image["samples"]) if feature == "masked" else None
            plan = GuidancePlan(trajectory, settings, guidance_fraction, mask, bool(start_from_trajectory))
        with prefix_errors(name, TrajectoryMismatch):
            out = sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                         plan)
        return io.NodeOutput(out)
