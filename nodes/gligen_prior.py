"""LSReGen step 1: a small GLIGEN picture drawn from the layout's boxes, the layout prior."""

from comfy_api.latest import io

from ..guidance.comfy_gligen import sample_prior
from ..layout.boxes import boxes_from_layout, check_boxes, parse_boxes
from .checks import finite, prefix_errors, sampler_and_scheduler
from .sampler_inputs import ksampler_inputs
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
                *ksampler_inputs(seed="Noise seed of the prior.", steps="Sampling steps of the prior.",
                                 cfg="Classifier-free guidance scale of the prior.",
                                 sampler_name="Sampler of the prior.", scheduler="Scheduler of the prior.",
                                 steps_default=20, cfg_default=7.5),
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
        with prefix_errors("GLIGEN Layout Prior"):
            phrases = boxes_from_layout(regions) if regions is not None else []
            with prefix_errors("boxes"):
                phrases += parse_boxes(boxes or "")
            check_boxes(phrases, "regions/boxes")
        if not prompt.strip():
            base = regions.base_prompt.strip() if regions is not None else ""
            prompt = "; ".join([p for p in [base] if p] + [phrase for phrase, _ in phrases])
        with prefix_errors("GLIGEN Layout Prior"):
            image, latent = sample_prior(model, clip, vae, gligen, phrases, prompt, negative, seed, steps, cfg,
                                         sampler_name, scheduler, width, height)
        return io.NodeOutput(image, latent)
