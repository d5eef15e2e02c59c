"""LSReGen step 2: the reference trajectory z_bar(sigma) of the upscaled, VAE-encoded prior."""

import comfy.samplers
from comfy_api.latest import io

from ..guidance.comfy_inversion import invert
from .checks import finite, one_of
from .sampler_inputs import guidance_fraction_input, scheduler_input, seed_input, steps_input
from .types import CATEGORY, Trajectory

METHODS = ["inversion", "forward_noise"]


class LatentInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RL_LatentInversion",
            display_name="Latent Inversion (LSReGen)",
            category=f"{CATEGORY}/lsregen",
            description="Inverts a latent (the upscaled, VAE-encoded layout prior) with the SDXL model into the noisy "
                        "latents at the guided sampler's first sigmas: deterministic DDIM inversion (Euler on "
                        "ascending sigmas, cfg 1), or forward noising (no model evaluations).",
            inputs=[
                io.Model.Input("model", tooltip="The model the guided sampler uses (SDXL)."),
                io.Conditioning.Input("positive",
                                      tooltip="Conditioning for the inversion, usually an empty prompt (cfg is 1)."),
                io.Latent.Input("latent",
                                tooltip="The prior, upscaled to the final size and encoded by this model's VAE."),
                io.Combo.Input("method", options=METHODS, default="inversion",
                               tooltip="inversion: DDIM inversion with the model (one evaluation per inversion "
                                       "step); forward_noise: z0 + sigma * noise at each sigma (free, less faithful)."),
                steps_input("The guided sampler's steps: the trajectory holds its first sigmas exactly."),
                scheduler_input("The guided sampler's scheduler."),
                guidance_fraction_input("How far to invert: the first ceil(fraction x steps) sigmas of the schedule "
                                        "(use the guided sampler's fraction or more)."),
                io.Int.Input("inversion_steps", default=5, min=1, max=1000,
                             tooltip="Coarse inversion grid: the schedule with this many steps, below the guided "
                                     "sigmas (each costs one model evaluation). 5 stays within 2 % of a 40-step "
                                     "inversion at the guided sigmas (README); fewer is faster, more is faithful."),
                seed_input("Noise seed for forward_noise (unused by inversion).", control_after_generate=None),
                io.Int.Input("refine", default=0, min=0, max=20,
                             tooltip="Fixed-point iterations per inversion step (one model evaluation each): each "
                                     "step is re-taken with the derivative at its end, so Euler sampling back "
                                     "retraces it. 0 is plain DDIM inversion; 1-2 make it a near-exact round trip."),
            ],
            outputs=[
                Trajectory.Output(display_name="trajectory",
                                  tooltip="The inverted latents with their sigmas, for the Backward Guidance "
                                          "KSampler."),
                io.Latent.Output(display_name="noisy_latent", tooltip="The latent at the highest inverted sigma."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent, method, steps, scheduler, guidance_fraction, inversion_steps,
                seed, refine=0) -> io.NodeOutput:
        finite("Latent Inversion", "guidance_fraction", guidance_fraction, 0.0, 1.0)
        one_of("Latent Inversion", "scheduler", scheduler, comfy.samplers.SCHEDULER_NAMES)
        one_of("Latent Inversion", "method", method, METHODS)
        trajectory, noisy = invert(model, positive, latent, steps, scheduler, guidance_fraction, inversion_steps,
                                   method, seed, refine)
        return io.NodeOutput(trajectory, noisy)
