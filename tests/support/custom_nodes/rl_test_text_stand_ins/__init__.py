"""TEST ONLY: stand-ins for text encoders too big for the tests (Qwen-Image's is Qwen2.5-VL 7B, 16 GB; Z-Image's
is Qwen3 4B, 8 GB).

RLTest_QwenImageTextStandIn gives a real CLIP object built from ComfyUI's own Qwen-Image text encoder classes
(comfy/text_encoders/qwen_image.py on the Qwen2.5 LLM of comfy/text_encoders/llama.py) with 1 layer at the real
width 3584, no vision tower, bf16 and seeded random weights: CLIPTextEncode and the pack's nodes run through
ComfyUI's real Qwen2 tokenizer, chat template and template stripping, and get conditioning of the real width
[B, T, 3584]. RLTest_ZImageTextStandIn does the same for Z-Image (comfy/text_encoders/z_image.py: Qwen3 4B, width
2560) with 3 layers, the fewest SDClipModel takes for the second-to-last layer that Z-Image reads. The pictures mean nothing.
Loaded only by the tests (an extra custom nodes folder)."""

from .random_clip import random_clip

LAYERS = 1
ZIMAGE_LAYERS = 3  # Z-Image reads layer -2, and SDClipModel takes a layer index only if |index| < layers


def qwen_image_text_stand_in():
    import comfy.text_encoders.qwen_image

    def drop_vision_tower(model):  # used only for image prompts
        del model.qwen25_7b.transformer.visual

    return random_clip(
        comfy.text_encoders.qwen_image.QwenImageTokenizer,
        comfy.text_encoders.qwen_image.te(),
        {"qwen25_7b_model_config": {"num_hidden_layers": LAYERS}},  # 16 GB at full depth
        before_fill=drop_vision_tower,
    )


def zimage_text_stand_in():
    import comfy.text_encoders.z_image

    return random_clip(
        comfy.text_encoders.z_image.ZImageTokenizer,
        comfy.text_encoders.z_image.te(),
        {"qwen3_4b_model_config": {"num_hidden_layers": ZIMAGE_LAYERS}},
    )


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
