"""Random-weight SDXL and SD1.5 UNets and a GLIGEN model at the real architectures' full size, built in memory.

For benchmarks: the tiny checkpoints shrink the UNets (their text encoders and VAEs are already full size), which
makes the VAE and the prior look far more expensive next to SDXL than they are. These models have the real
widths and depths, take the tiny models' seeded values (`init_value`), and go through ComfyUI's own loaders
(`load_diffusion_model_state_dict`, `gligen.load_gligen`), so ComfyUI detects and runs them like real weights.
Nothing is written to disk. ComfyUI must be importable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tiny_models import _gligen, init_value

if TYPE_CHECKING:
    import torch

# The released models' UNet configs, as comfy/model_detection.py lists them for diffusers conversion.
_UNET: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "in_channels": 4,
    "model_channels": 320,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SDXL_UNET: dict[str, Any] = {
    **_UNET,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
}
SD15_UNET: dict[str, Any] = {
    **_UNET,
    "adm_in_channels": None,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
}


def _values(meta: dict, dtype: torch.dtype) -> dict:
    return {k: init_value(k, tuple(v.shape)).to(dtype) for k, v in meta.items()}


def unet(family: str, dtype: torch.dtype):
    """A ModelPatcher for the full-size `family` ("SDXL" or "SD15") UNet with seeded random weights."""
    import torch
    import comfy.sd
    import comfy.supported_models as sm

    config = {"SDXL": SDXL_UNET, "SD15": SD15_UNET}[family]
    meta = getattr(sm, family)(config).get_model({}, device=torch.device("meta")).diffusion_model.state_dict()
    patcher = comfy.sd.load_diffusion_model_state_dict(_values(meta, dtype), model_options={"dtype": dtype})
    if type(patcher.model.model_config) is not getattr(sm, family):
        raise RuntimeError(f"ComfyUI detects {type(patcher.model.model_config).__name__}, not {family}")
    return patcher


def gligen():
    """A ModelPatcher for a GLIGEN textbox model that fits the full-size SD1.5 UNet, typed as comfy.sd.load_gligen
    types it (its layers do not cast: float16 where ComfyUI computes in float16, else float32)."""
    import torch
    import comfy.gligen
    import comfy.model_management as mm
    import comfy.model_patcher

    model = comfy.gligen.load_gligen(_values(_gligen(SD15_UNET), torch.float32))
    if mm.should_use_fp16():
        model = model.half()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
