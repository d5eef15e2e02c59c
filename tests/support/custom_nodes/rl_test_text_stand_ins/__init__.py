"""TEST ONLY: stand-ins for text encoders too big for the tests (Qwen-Image's is Qwen2.5-VL 7B, 16 GB; Z-Image's
is Qwen3 4B, 8 GB).

RLTest_QwenImageTextStandIn gives a real CLIP object built from ComfyUI's own Qwen-Image text encoder classes
(comfy/text_encoders/qwen_image.py on the Qwen2.5 LLM of comfy/text_encoders/llama.py) with 1 layer at the real
width 3584, no vision tower, bf16 and seeded random weights: CLIPTextEncode and the pack's nodes run through
ComfyUI's real Qwen2 tokenizer, chat template and template stripping, and get conditioning of the real width
[B, T, 3584]. RLTest_ZImageTextStandIn does the same for Z-Image (comfy/text_encoders/z_image.py: Qwen3 4B, width
2560) with 3 layers, the fewest SDClipModel takes for the second-to-last layer that Z-Image reads. The pictures mean nothing.
Loaded only by the tests (an extra custom nodes folder)."""

import sys
from pathlib import Path

LAYERS = 1
ZIMAGE_LAYERS = 3  # Z-Image reads layer -2, and SDClipModel takes a layer index only if |index| < layers
SCRIPTS = Path(__file__).resolve().parents[4] / "scripts"  # rl_devkit: the tiny models' seeded init


def qwen_image_text_stand_in():
    import torch
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.qwen_image

    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    from rl_devkit.tiny_models import seeded

    target = comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.qwen_image.QwenImageTokenizer, comfy.text_encoders.qwen_image.te()
    )
    # ComfyUI's own per-encoder config override ("<name>_model_config"); built on the meta device so that the
    # 16 GB are never allocated, then the vision tower (used only for image prompts) is dropped.
    options = {
        "qwen25_7b_model_config": {"num_hidden_layers": LAYERS},
        "dtype": torch.bfloat16,
        "initial_device": torch.device("meta"),
    }
    clip = comfy.sd.CLIP(target, model_options=options)
    llm = clip.cond_stage_model.qwen25_7b.transformer
    del llm.visual
    clip.cond_stage_model.to_empty(device=torch.device("cpu"))
    seeded(clip.cond_stage_model, seed=0)
    return clip


def zimage_text_stand_in():
    import torch
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.z_image

    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    from rl_devkit.tiny_models import seeded

    target = comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.z_image.ZImageTokenizer, comfy.text_encoders.z_image.te()
    )
    options = {  # as for Qwen-Image: ComfyUI's own config override, built on the meta device
        "qwen3_4b_model_config": {"num_hidden_layers": ZIMAGE_LAYERS},
        "dtype": torch.bfloat16,
        "initial_device": torch.device("meta"),
    }
    clip = comfy.sd.CLIP(target, model_options=options)
    clip.cond_stage_model.to_empty(device=torch.device("cpu"))
    seeded(clip.cond_stage_model, seed=0)
    return clip


class QwenImageTextStandIn:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self):
        return (qwen_image_text_stand_in(),)


class ZImageTextStandIn(QwenImageTextStandIn):
    def load(self):
        return (zimage_text_stand_in(),)


from .flux2 import Flux2TextStandIn  # noqa: E402  (FLUX.2's Mistral 3 Small 24B)

NODE_CLASS_MAPPINGS = {
    "RLTest_QwenImageTextStandIn": QwenImageTextStandIn,
    "RLTest_Flux2TextStandIn": Flux2TextStandIn,
    "RLTest_ZImageTextStandIn": ZImageTextStandIn,
}
