"""A stand-in for quantized-weight loaders (ComfyUI-GGUF's way), loaded next to the pack by
tests/test_quantized_weights.py: a diffusion-model loader whose Linear layers keep their weight as int8 codes with one
float scale per output row, and dequantize inside `forward` (ComfyUI-GGUF keeps GGML blocks in a tensor subclass and
dequantizes in its ops' forward the same way). The model is built by ComfyUI's own loader through
`model_options["custom_operations"]`, so ComfyUI's model management, wrappers and patch points see a normal model."""

import comfy.ops
import comfy.sd
import folder_paths
import torch


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes with one absmax scale per output row (Q8_0 uses one per 32 weights)."""
    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


class Int8Ops(comfy.ops.manual_cast):
    class Linear(comfy.ops.manual_cast.Linear):
        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
            # the float weight never stays: only its int8 codes and row scales are kept
            for key, value in state_dict.items():
                name = key[len(prefix) :]
                if name == "weight":
                    codes, scale = quantize_rows(value)
                    self.weight = torch.nn.Parameter(codes, requires_grad=False)
                    self.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
                elif name == "bias":
                    self.bias = torch.nn.Parameter(value.float(), requires_grad=False)
            if prefix + "weight" not in state_dict:
                missing.append(prefix + "weight")

        def forward(self, x, *args, **kwargs):
            weight = self.weight.to(x.dtype) * self.weight_scale.to(x.device, x.dtype)
            bias = None if self.bias is None else self.bias.to(x.device, x.dtype)
            return torch.nn.functional.linear(x, weight, bias)


class QuantizedUNETLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": (folder_paths.get_filename_list("diffusion_models"),)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, unet_name):
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        model = comfy.sd.load_diffusion_model(path, model_options={"custom_operations": Int8Ops})
        int8 = [m for m in model.model.diffusion_model.modules() if getattr(m, "weight", None) is not None]
        if not any(m.weight.dtype == torch.int8 for m in int8):
            raise RuntimeError("RLTest_QuantizedUNETLoader: the custom operations were not used")
        return (model,)


NODE_CLASS_MAPPINGS = {"RLTest_QuantizedUNETLoader": QuantizedUNETLoader}
