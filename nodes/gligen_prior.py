"""LSReGen step 1: a small GLIGEN picture drawn from the layout's boxes, the layout prior."""

import comfy.samplers
from comfy_api.latest import io

from ..guidance.comfy_gligen import sample_prior
from ..layout.boxes import boxes_from_layout, check_boxes, parse_boxes
from .checks import finite, sampler_and_scheduler
from .types import CATEGORY, Regions


class GligenLayoutPrior(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RL_GligenLayoutPrior",
            display_name="GLIGEN Layout Prior",
            category=f"{CATEGORY}/lsregen",
            description="Samples a small SD1.x + GLIGEN picture whose objects sit in the layout's boxes: the layout "
                        "prior LSReGen guides SDXL with. Uses ComfyUI's own GLIGEN position conditioning.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x model (GLIGEN textbox weights exist for SD1.4/1.5)."),
                io.Clip.Input("clip", tooltip="The SD1.x checkpoint's CLIP: encodes the prompt and every phrase."),
                io.Vae.Input("vae", tooltip="The SD1.x checkpoint's VAE, to decode the prior."),
                io.Gligen.Input("gligen", tooltip="GLIGEN textbox weights (GLIGENLoader) made for this model."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Prompt for the whole prior; empty uses the layout's base prompt followed "
                                        "by every phrase."),
                io.String.Input("negative", multiline=True, default="", tooltip="Negative prompt."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Noise seed of the prior."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps of the prior."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale of the prior."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler",
                               tooltip="Sampler of the prior."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal",
                               tooltip="Scheduler of the prior."),
                io.Int.Input("width", default=512, min=64, max=2048, step=8,
                             tooltip="Prior width in pixels. Boxes keep their fractions of the picture, so a prior "
                                     "of another aspect ratio is a squeezed layout that ImageScale stretches back."),
                io.Int.Input("height", default=512, min=64, max=2048, step=8, tooltip="Prior height in pixels."),
                Regions.Input("regions", optional=True,
                              tooltip="The layout: every region with a prompt becomes a GLIGEN box (its mask's "
                                      "bounding box) with its prompt as the phrase. At most 30."),
                io.String.Input("boxes", multiline=True, default="", optional=True,
                                tooltip="Extra boxes, one per line `x y w h: phrase`, as fractions 0..1 of the "
                                        "picture (e.g. `0.1 0.2 0.3 0.5: a red car`)."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The layout prior picture."),
                io.Latent.Output(display_name="latent", tooltip="The prior's SD1.x latent."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, gligen, prompt, negative, seed, steps, cfg, sampler_name, scheduler,
                width, height, regions=None, boxes="") -> io.NodeOutput:
        finite("GLIGEN Layout Prior", "cfg", cfg, low=0.0)
        sampler_and_scheduler("GLIGEN Layout Prior", sampler_name, scheduler)
        try:
            phrases = boxes_from_layout(regions) if regions is not None else []
            try:
                phrases += parse_boxes(boxes or "")
            except ValueError as err:
                raise ValueError(f"boxes: {err}") from None
            check_boxes(phrases, "regions/boxes")
        except ValueError as err:
            raise ValueError(f"GLIGEN Layout Prior: {err}") from None
        if not prompt.strip():
            base = regions.base_prompt.strip() if regions is not None else ""
            prompt = "; ".join([p for p in [base] if p] + [phrase for phrase, _ in phrases])
        try:
            image, latent = sample_prior(model, clip, vae, gligen, phrases, prompt, negative, seed, steps, cfg,
                                         sampler_name, scheduler, width, height)
        except ValueError as err:
            raise ValueError(f"GLIGEN Layout Prior: {err}") from None
        return io.NodeOutput(image, latent)
