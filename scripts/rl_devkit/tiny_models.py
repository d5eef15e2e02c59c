"""Tiny, seeded, random-weight models of the real architectures, laid out like ComfyUI's `models/` folder.

Every file has its real-world name and the key layout of the real file, and ComfyUI's own loader nodes
detect the right model family from it, so a workflow written for real weights runs unchanged on these.
ComfyUI's loaders accept only real widths (FLUX must be 3072 wide, the text encoders and VAEs full size): only
block counts can shrink.

Shapes and key names come from ComfyUI's own classes, built on the meta device and converted with its own
`state_dict_for_saving` helpers; each builder then checks that ComfyUI's detection recognises the result.
Values are filled tensor by tensor (seeded from BASE_SEED and the key name) and streamed to disk, so files
are reproducible byte for byte and the 4.7 GB T5-XXL never sits in memory.

ComfyUI must be importable (on sys.path); it and torch are imported only when something is generated.
Command line: python -m rl_devkit.tiny_models OUT_DIR [--no-t5]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import torch
    from comfy.ldm.flux.model import Flux

FORMAT_VERSION = 1  # bump to regenerate every cached file (e.g. after changing the init rules)
BASE_SEED = 0
MANIFEST_NAME = "tiny_models.json"
FLUX_DOUBLE_BLOCKS = 1
FLUX_SINGLE_BLOCKS = 1
EMBEDDING_STD = 0.02
# GLIGEN trains its gates up from 0; a zero gate would make boxes change nothing, so open them.
GLIGEN_GATE = 1.0

# What ComfyUI's model detection derives from a FLUX.1 file (heads, axes and widths are hard-coded there).
FLUX_DIT: dict[str, Any] = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "vec_in_dim": 768,
    "context_in_dim": 4096,
    "hidden_size": 3072,
    "mlp_ratio": 4.0,
    "num_heads": 24,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "qkv_bias": True,
}
# Chroma as ComfyUI detects it: FLUX's transformer without the vector input, the distilled guidance layer's sizes.
CHROMA_DIT: dict[str, Any] = {
    **{key: value for key, value in FLUX_DIT.items() if key != "vec_in_dim"},
    "image_model": "chroma",
    "in_channels": 64,
    "out_channels": 64,
    "in_dim": 64,
    "out_dim": 3072,
    "hidden_dim": 5120,
    "n_layers": 5,
}
# FLUX.2 dev as ComfyUI detects it (heads, axes and widths hard-coded there; 8 double + 48 single blocks). Newer
# hosts also want txt_ids_dims (the text position axes): flux2_params adds it where ComfyUI's FluxParams has it.
FLUX2_DIT: dict[str, Any] = {
    "image_model": "flux2",
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "vec_in_dim": None,
    "context_in_dim": 15360,
    "hidden_size": 6144,
    "mlp_ratio": 3.0,
    "num_heads": 48,
    "axes_dim": [32, 32, 32, 32],
    "theta": 2000,
    "qkv_bias": False,
    "guidance_embed": True,
    "global_modulation": True,
    "mlp_silu_act": True,
    "ops_bias": False,
    "default_ref_method": "index",
    "ref_index_scale": 10.0,
}
# Qwen-Image as ComfyUI detects it (from txt_norm, img_in's width and the block count; 3072 wide, 24 heads,
# text width 3584 are the class defaults). Its latents are Wan 2.1's: the VAE's base width is read from the file.
QWEN_IMAGE_DIT: dict[str, Any] = {"image_model": "qwen_image", "in_channels": 64}
QWEN_IMAGE_BLOCKS = 1
WAN21_VAE_DIM = 96  # the real Wan 2.1 / Qwen-Image VAE's base width
# Z-Image as ComfyUI detects it: the Z-Image branch needs the full width (cap_embedder 2560 -> 3840) and the pad
# tokens; the joint layers are counted, the 2 + 2 refiner layers are the class default. Its VAE is FLUX's ae.
ZIMAGE_UNET_CONFIG: dict[str, Any] = {
    "image_model": "lumina2",
    "dim": 3840,
    "cap_feat_dim": 2560,
    "n_heads": 30,
    "n_kv_heads": 30,
    "axes_dims": [32, 48, 48],
}
ZIMAGE_LAYERS = 1
# UNet configs in the form model_detection.detect_unet_config derives from a checkpoint.
_UNET_COMMON: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
SD15_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    "adm_in_channels": None,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "channel_mult": [1, 1],
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1],
}
# SDXL is told apart from SSD-1B, Vega and KOALA by its input transformer depths alone, so those stay real.
SDXL_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "context_dim": 2048,
    "use_linear_in_transformer": True,
    "channel_mult": [1, 1, 1],
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
}
_KL_VAE: dict[str, Any] = {
    "double_z": True,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
GLIGEN_KEY_DIM = 768  # SD1.x: ComfyUI's GLIGEN loader then uses 8 heads
GLIGEN_HEADS = 8
# A FLUX LoRA in the plain "diffusion_model.<layer>.lora_up/lora_down/alpha" layout that ComfyUI maps for FLUX.
# With alpha = rank, up ~ N(0, 1/rank) and down ~ N(0, 1/fan_in) give a weight change as large as the weight itself.
FLUX_LORA_RANK = 4
FLUX_LORA_LAYERS = (
    "double_blocks.0.img_attn.qkv",
    "double_blocks.0.txt_attn.qkv",
    "double_blocks.0.img_mlp.0",
    "single_blocks.0.linear1",
    "single_blocks.0.linear2",
)
# An XLabs-format FLUX ControlNet (what ComfyUI's loader routes to load_controlnet_flux_xlabs_mistoline): the
# FLUX.1 trunk without final layer, controlnet_blocks and the hint encoder; real ones have 2 double blocks, 0 single.
FLUX_CONTROLNET_DOUBLE_BLOCKS = 1
# FLUX.2 dev as UNETLoader detects it: 6144 wide (the floor host hard-codes 48 heads of 128 whatever the width),
# text width 15360 (three taps of Mistral 3 Small's 5120, as the test-only text encoder stand-in gives); the block
# counts are free. Its VAE: the KL-f8 trunk with 32 latent channels, batch-normed in 2x2 patches (128 per token).
FLUX2_DOUBLE_BLOCKS = 1
FLUX2_SINGLE_BLOCKS = 1
FLUX2_VAE_LATENT_CHANNELS = 32
# SD3.5 Medium as UNETLoader detects an MMDiT: the width is 64 x depth (depth heads of 64), so the block count is
# the width; the text width (CLIP-L | CLIP-G widened to 4096, T5's 4096) and the pooled width (768 + 1280) are
# read from the file and stay real. Medium's first 13 blocks have the image-only x_block_self_attn: block 0 here.
SD3_DIT: dict[str, Any] = {
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "input_size": None,
    "adm_in_channels": 2048,
    "qk_norm": "rms",
    "pos_embed_scaling_factor": None,
    "num_patches": 64 * 64,  # pos_embed_max_size 64: up to 1024 px a side (Medium's 384 adds 36 MB, no coverage)
    "pos_embed_max_size": 64,
    "x_block_self_attn_layers": [0],
}
SD3_DEPTH = 2
# The same MMDiT twice, under one name as users have it: for UNETLoader, and as Stability ships SD3.5 (with its VAE)
SD35_UNET_FILE = "diffusion_models/sd3.5_medium.safetensors"
SD35_CHECKPOINT_FILE = "checkpoints/sd3.5_medium.safetensors"

_SAFETENSORS_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "int64": "I64",
}
_EMBEDDING_KEY = re.compile(r"(embedding(\.weight)?|shared\.weight|relative_attention_bias\.weight)$")
_GATE_LEAVES = ("alpha_attn", "alpha_dense")


@dataclass(frozen=True)
class TinyModel:
    path: str  # relative to the output folder: "<ComfyUI models folder>/<real file name>"
    dtype: str  # torch dtype of the floating-point tensors on disk
    build: Callable[..., dict]  # returns {on-disk key: tensor}; meta tensors get seeded random values
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments of `build`

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def recipe(self) -> dict[str, Any]:
        """Everything that decides the file's bytes, as stored in the manifest (a change regenerates it)."""
        return json.loads(
            json.dumps({"dtype": self.dtype, "build": self.build.__name__, "params": self.params, "seed": BASE_SEED})
        )


# ---------------------------------------------------------------------------------------------------------
# Public API


def tiny_models(include_t5: bool = True) -> list[TinyModel]:
    """The files `ensure_tiny_models` writes, in writing order (the slow T5-XXL last)."""
    flux_depths = {"depth": FLUX_DOUBLE_BLOCKS, "depth_single_blocks": FLUX_SINGLE_BLOCKS}
    models = [
        TinyModel("diffusion_models/flux1-dev.safetensors", "bfloat16", _flux, {"guidance_embed": True, **flux_depths}),
        TinyModel(
            "diffusion_models/flux1-schnell.safetensors", "bfloat16", _flux, {"guidance_embed": False, **flux_depths}
        ),
        TinyModel("diffusion_models/Chroma1-HD.safetensors", "bfloat16", _chroma, flux_depths),
        TinyModel(
            "diffusion_models/qwen_image_bf16.safetensors", "bfloat16", _qwen_image, {"num_layers": QWEN_IMAGE_BLOCKS}
        ),
        TinyModel("vae/qwen_image_vae.safetensors", "bfloat16", _wan21_vae, {"dim": WAN21_VAE_DIM}),
        TinyModel("diffusion_models/z_image_turbo_bf16.safetensors", "bfloat16", _zimage, {"n_layers": ZIMAGE_LAYERS}),
        TinyModel("text_encoders/clip_l.safetensors", "float16", _clip_l),
        TinyModel("vae/ae.safetensors", "float32", _kl_vae, {"latent_channels": 16, "quant_conv": False}),
        TinyModel(
            "checkpoints/sd_xl_base_1.0.safetensors", "float16", _checkpoint, {"family": "SDXL", "unet": SDXL_UNET}
        ),
        TinyModel(
            "checkpoints/v1-5-pruned-emaonly.safetensors", "float16", _checkpoint, {"family": "SD15", "unet": SD15_UNET}
        ),
        TinyModel("gligen/gligen_sd14_textbox_pruned.safetensors", "float16", _gligen, {"unet": SD15_UNET}),
        TinyModel(
            "loras/flux_tiny_lora.safetensors",
            "bfloat16",
            _flux_lora,
            {"layers": list(FLUX_LORA_LAYERS), "rank": FLUX_LORA_RANK, **flux_depths},
        ),
        TinyModel(
            "controlnet/flux_tiny_controlnet_xlabs.safetensors",
            "bfloat16",
            _flux_controlnet_xlabs,
            {"depth": FLUX_CONTROLNET_DOUBLE_BLOCKS},
        ),
        TinyModel(
            "diffusion_models/flux2_dev_fp8mixed.safetensors",
            "float8_e4m3fn",
            _flux2,
            {"depth": FLUX2_DOUBLE_BLOCKS, "depth_single_blocks": FLUX2_SINGLE_BLOCKS},
        ),
        TinyModel("vae/flux2-vae.safetensors", "bfloat16", _flux2_vae, {"latent_channels": FLUX2_VAE_LATENT_CHANNELS}),
        TinyModel(SD35_UNET_FILE, "float16", _sd3, {"depth": SD3_DEPTH}),
        TinyModel(SD35_CHECKPOINT_FILE, "float16", _sd3_checkpoint, {"depth": SD3_DEPTH}),
    ]
    if include_t5:
        models.append(TinyModel("text_encoders/t5xxl_fp8_e4m3fn.safetensors", "float8_e4m3fn", _t5xxl))
    return models


def ensure_tiny_models(
    out_dir: str | os.PathLike, *, include_t5: bool = True, log: Callable[[str], Any] = print
) -> dict[str, Path]:
    """Write the missing tiny models into `out_dir`; returns the path of every requested model, by its path in
    `out_dir` (a file name can sit in two folders: SD3.5 Medium).

    Complete files (recorded in the manifest with the same recipe and size) are kept, so a second call only
    reads the manifest and stats the files. Files are written under a temporary name and renamed when done.
    """
    out = Path(out_dir)
    wanted = tiny_models(include_t5)
    if any(not _is_complete(out, m, _read_manifest(out)) for m in wanted):
        out.mkdir(parents=True, exist_ok=True)
        with _exclusive(out):
            manifest = _read_manifest(out)  # another process may have written some while we waited
            for model in wanted:
                if not _is_complete(out, model, manifest):
                    manifest["files"][model.path] = _generate(out, model, log)
                    _write_manifest(out, manifest)
    return {m.path: out / m.path for m in wanted}


def small_flux(
    hidden_size: int = 128,
    num_heads: int = 2,
    depth: int = 2,
    depth_single_blocks: int = 2,
    guidance_embed: bool = True,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    *,
    context_in_dim: int = 64,
    vec_in_dim: int | None = 32,
    axes_dim: list[int] | None = None,
    in_channels: int = 16,
    txt_ids_dims: list[int] | None = None,
) -> Flux:
    """A small FLUX built from ComfyUI's own class with seeded random weights, for fast unit tests.

    Latents have 16 channels in 2x2 patches (64 inputs per token) like FLUX.1; `in_channels` adds the channels
    FLUX.1 Fill (96: + masked image + mask) or Canny/Depth (32: + control latent) concatenate to the latent before
    the model; `txt_ids_dims` ([1, 2]: LongCat-Image, newer hosts only) counts text positions on those RoPE axes;
    `vec_in_dim` None drops the pooled vector (LongCat-Image); `dtype` defaults to float32.
    `axes_dim` (the RoPE split of one head) must sum to hidden_size / num_heads; the default scales FLUX.1's
    [16, 56, 56] (e.g. [8, 28, 28] for head dim 64).
    """
    import torch
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    config = dict(
        image_model="flux",
        in_channels=in_channels,
        out_channels=16,
        patch_size=2,
        vec_in_dim=vec_in_dim,
        context_in_dim=context_in_dim,
        hidden_size=hidden_size,
        mlp_ratio=4.0,
        num_heads=num_heads,
        depth=depth,
        depth_single_blocks=depth_single_blocks,
        axes_dim=list(axes_dim) if axes_dim else flux_axes_dim(hidden_size // num_heads),
        theta=10000,
        qkv_bias=True,
        guidance_embed=guidance_embed,
    )
    # manual_cast: any input dtype works
    config = flux_params(config, list(txt_ids_dims or []))
    if txt_ids_dims and "txt_ids_dims" not in config:
        raise ValueError("this ComfyUI's Flux class has no txt_ids_dims (LongCat-Image needs a newer host)")
    model = Flux(**config, dtype=dtype or torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    return seeded(model, seed)


def seeded(model, seed: int):
    """`model` with every parameter set to its seeded init_value (ComfyUI's ops leave weights uninitialised), in
    eval mode and without gradients."""
    import torch

    with torch.no_grad():
        for key, param in model.named_parameters():
            param.copy_(init_value(key, tuple(param.shape), seed))
    return model.eval().requires_grad_(False)


def small_chroma(
    hidden_size: int = 128,
    num_heads: int = 2,
    depth: int = 2,
    depth_single_blocks: int = 2,
    seed: int = 0,
    *,
    context_in_dim: int = 64,
):
    """A small Chroma (FLUX blocks without the pooled vector; modulations from the distilled guidance layer) from
    ComfyUI's own class with seeded random weights, for fast unit tests. Latents: 16 channels in 2x2 patches."""
    import torch
    import comfy.ops
    from comfy.ldm.chroma.model import Chroma, ChromaParams

    config = dict(
        in_channels=64,
        out_channels=64,
        context_in_dim=context_in_dim,
        hidden_size=hidden_size,
        mlp_ratio=4.0,
        num_heads=num_heads,
        depth=depth,
        depth_single_blocks=depth_single_blocks,
        axes_dim=flux_axes_dim(hidden_size // num_heads),
        theta=10000,
        patch_size=2,
        qkv_bias=True,
        in_dim=64,
        out_dim=hidden_size,
        hidden_dim=64,
        n_layers=1,
    )
    config = with_host_fields(ChromaParams, config, txt_ids_dims=[], vec_in_dim=None)
    model = Chroma(image_model="chroma", **config, dtype=torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    return seeded(model, seed)


def small_qwen_image(
    hidden_size: int = 64,
    num_heads: int = 2,
    depth: int = 2,
    seed: int = 0,
    *,
    joint_attention_dim: int = 64,
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12),
    dtype: torch.dtype | None = None,
):
    """A small Qwen-Image (double-stream blocks only; text positions arange(txt_start, ...) in its RoPE) from
    ComfyUI's own class with seeded random weights, for fast unit tests. Latents: 16 channels with a time axis of 1
    ([B, 16, 1, H, W]) in 2x2 patches; `axes_dims_rope` must sum to hidden_size / num_heads (Qwen-Image: 3072,
    24 heads, joint_attention_dim 3584, axes (16, 56, 56)); `dtype` defaults to float32."""
    import torch
    import comfy.ops
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=depth,
        attention_head_dim=hidden_size // num_heads,
        num_attention_heads=num_heads,
        joint_attention_dim=joint_attention_dim,
        axes_dims_rope=tuple(axes_dims_rope),
        image_model="qwen_image",
        dtype=dtype or torch.float32,
        device="cpu",
        operations=comfy.ops.manual_cast,
    )
    return seeded(model, seed)


def small_qwen_image_model(seed: int = 0, **kwargs):
    """ComfyUI's QwenImage BaseModel (what UNETLoader hands LoraLoader: its class and state dict drive
    comfy.lora.model_lora_keys_unet) holding `small_qwen_image(seed=seed, **kwargs)`."""
    import torch
    import comfy.model_base
    import comfy.supported_models

    config = comfy.supported_models.QwenImage({"image_model": "qwen_image", "disable_unet_model_creation": True})
    model = comfy.model_base.QwenImage(config, device=torch.device("cpu"))
    model.diffusion_model = small_qwen_image(seed=seed, **kwargs)
    return model


# Z-Image's NextDiT configuration as ComfyUI's model_detection sets it (dim 3840 branch), without the widths
ZIMAGE_DIT = dict(
    patch_size=2,
    in_channels=16,
    multiple_of=256,
    ffn_dim_multiplier=8.0 / 3.0,
    qk_norm=True,
    axes_lens=[1536, 512, 512],
    rope_theta=256.0,
    z_image_modulation=True,
    time_scale=1000.0,
    pad_tokens_multiple=32,
    image_model="lumina2",
)


def small_zimage(
    dim: int = 256,
    n_heads: int = 2,
    n_layers: int = 2,
    seed: int = 0,
    *,
    n_refiner_layers: int = 2,
    cap_feat_dim: int = 48,
    axes_dims: tuple[int, int, int] = (32, 48, 48),
    dtype: torch.dtype | None = None,
):
    """A small Z-Image from ComfyUI's own NextDiT class with Z-Image's configuration (model_detection's dim 3840
    branch: z_image_modulation, qk_norm, caption and image pad tokens to a multiple of 32, RoPE theta 256, time
    scale 1000, FFN 8/3) at a small width, seeded random weights. Latents: 16 channels in 2x2 patches; `axes_dims`
    must sum to dim / n_heads (Z-Image: 3840, 30 heads, axes (32, 48, 48), cap_feat_dim 2560); dim at least 256
    (the modulations take the 256-wide timestep embedding as min(dim, 256)); `dtype` defaults to float32."""
    import torch
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT

    model = NextDiT(
        **ZIMAGE_DIT,
        dim=dim,
        n_layers=n_layers,
        n_refiner_layers=n_refiner_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        cap_feat_dim=cap_feat_dim,
        axes_dims=list(axes_dims),
        dtype=dtype or torch.float32,
        device="cpu",
        operations=comfy.ops.manual_cast,
    )
    return seeded(model, seed)


def small_krea2(
    features: int = 64,
    heads: int = 2,
    layers: int = 2,
    seed: int = 0,
    *,
    txtdim: int = 32,
    txtlayers: int = 3,
    txtheads: int = 2,
    dtype: torch.dtype | None = None,
):
    """A small Krea 2 from ComfyUI's own SingleStreamDiT (newer hosts only) at a small width, seeded random weights:
    `layers` single-stream blocks, txtfusion over `txtlayers` encoder layers of width `txtdim` (the context is
    txtlayers * txtdim wide; Krea 2: 12 x 2560, features 6144, 48 heads, 12 kv heads), GQA with heads / 2 kv heads,
    2x2 patches over 16 latent channels. features / heads must be a multiple of 16 (the three RoPE axes)."""
    import torch
    import comfy.ops
    from comfy.ldm.krea2.model import SingleStreamDiT

    model = SingleStreamDiT(
        features=features,
        heads=heads,
        kvheads=max(heads // 2, 1),
        layers=layers,
        txtdim=txtdim,
        txtlayers=txtlayers,
        txtheads=txtheads,
        txtkvheads=txtheads,
        dtype=dtype or torch.float32,
        device="cpu",
        operations=comfy.ops.manual_cast,
    )
    return seeded(model, seed)


def with_host_fields(params_class, config: dict, **fields) -> dict:
    """`config` plus those of `fields` this host's params dataclass declares (v0.30 added txt_ids_dims to Flux and
    Chroma, and vec_in_dim to Chroma; 0.3.76 has neither)."""
    declared = params_class.__dataclass_fields__
    return {**{k: v for k, v in fields.items() if k in declared}, **config}


def small_sd3(
    depth: int = 2,
    seed: int = 0,
    *,
    context_in_dim: int = 64,
    adm_in_channels: int = 32,
    x_block_self_attn_layers: tuple[int, ...] = (0,),
    pos_embed_max_size: int = 16,
):
    """A small SD3.5 Medium-like MMDiT (ComfyUI's OpenAISignatureMMDITWrapper: `depth` joint blocks, the last one
    pre_only for the text, RMS q/k norms, an image-only second attention in the x_block of the blocks in
    `x_block_self_attn_layers`, a learnt pos_embed cropped to the size) with seeded random weights, for fast unit
    tests. MMDiT fixes the width at 64 * depth with `depth` heads of 64. Latents: 16 channels in 2x2 patches, at
    most 2 * pos_embed_max_size latent pixels a side; text [B, T, context_in_dim], pooled y [B, adm_in_channels]."""
    import torch
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    hidden = 64 * depth
    model = OpenAISignatureMMDITWrapper(
        input_size=None,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        depth=depth,
        adm_in_channels=adm_in_channels,
        context_embedder_config={
            "target": "torch.nn.Linear",
            "params": {"in_features": context_in_dim, "out_features": hidden},
        },
        num_patches=pos_embed_max_size**2,
        pos_embed_max_size=pos_embed_max_size,
        pos_embed_scaling_factor=None,
        qk_norm="rms",
        x_block_self_attn_layers=list(x_block_self_attn_layers),
        dtype=torch.float32,
        device="cpu",
        operations=comfy.ops.manual_cast,
    )
    seeded(model, seed)
    with torch.no_grad():  # a buffer, so seeded() leaves it uninitialised; learnt, O(1) like the image features
        model.pos_embed.copy_(_randn("pos_embed", tuple(model.pos_embed.shape), seed))
    return model


def small_sd3_model(seed: int = 0, **kwargs):
    """ComfyUI's SD3 BaseModel (flow matching, shift 3; its apply_model is where the regional wrapper goes for
    SD3) holding `small_sd3(seed=seed, **kwargs)`."""
    import torch
    import comfy.model_base
    import comfy.supported_models

    config = comfy.supported_models.SD3({"in_channels": 16, "disable_unet_model_creation": True})
    model = comfy.model_base.SD3(config, device=torch.device("cpu"))
    model.diffusion_model = small_sd3(seed=seed, **kwargs)
    return model


def flux_params(config: dict, txt_ids_dims: list[int]) -> dict:
    """A Flux config for this host's Flux class: txt_ids_dims lists the RoPE axes holding text positions (FLUX.1
    none, FLUX.2 [3], LongCat-Image [1, 2]); 0.3.76 has no such field (text positions on the last axis of every
    4-axis model)."""
    from comfy.ldm.flux.model import FluxParams

    return with_host_fields(FluxParams, config, txt_ids_dims=txt_ids_dims)


def flux2_params(config: dict) -> dict:
    return flux_params(config, [3])


def small_flux2(
    hidden_size: int = 128,
    num_heads: int = 2,
    depth: int = 2,
    depth_single_blocks: int = 2,
    seed: int = 0,
    *,
    context_in_dim: int = 64,
    dtype: torch.dtype | None = None,
):
    """A small FLUX.2 (global modulation, four RoPE axes with text positions on the last, no pooled vector) from
    ComfyUI's own Flux class with seeded random weights, for fast unit tests. Latents: 128 channels, patch size 1;
    the head is split into four equal RoPE axes (FLUX.2: [32, 32, 32, 32] for head dim 128)."""
    import torch
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    head_dim = hidden_size // num_heads
    if hidden_size % num_heads or head_dim % 8:
        raise ValueError(f"hidden_size {hidden_size} / num_heads {num_heads} needs a head dim divisible by 8")
    config = {
        **FLUX2_DIT,
        "context_in_dim": context_in_dim,
        "hidden_size": hidden_size,
        "num_heads": num_heads,
        "axes_dim": [head_dim // 4] * 4,
        "depth": depth,
        "depth_single_blocks": depth_single_blocks,
    }
    model = Flux(**flux2_params(config), dtype=dtype or torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    return seeded(model, seed)


def small_flux2_model(seed: int = 0, **kwargs):
    """ComfyUI's Flux2 BaseModel (what UNETLoader hands LoraLoader: its class and config drive
    comfy.lora.model_lora_keys_unet) holding `small_flux2(seed=seed, **kwargs)`."""
    import torch
    import comfy.model_base
    import comfy.supported_models

    diffusion_model = small_flux2(seed=seed, **kwargs)
    params = diffusion_model.params
    unet_config = {
        **FLUX2_DIT,
        "hidden_size": params.hidden_size,
        "num_heads": params.num_heads,
        "depth": params.depth,
        "depth_single_blocks": params.depth_single_blocks,
        "context_in_dim": params.context_in_dim,
        "axes_dim": list(params.axes_dim),
        "disable_unet_model_creation": True,
    }
    model = comfy.model_base.Flux2(comfy.supported_models.Flux2(unet_config), device=torch.device("cpu"))
    model.diffusion_model = diffusion_model
    return model


def flux_axes_dim(head_dim: int) -> list[int]:
    """FLUX.1's RoPE split of a head ([16, 56, 56] for 128) scaled to `head_dim`; every part must be even."""
    first = head_dim // 8
    rest = (head_dim - first) // 2
    axes = [first, rest, rest]
    if sum(axes) != head_dim or any(a % 2 for a in axes):
        raise ValueError(f"no FLUX-like axes_dim for head dim {head_dim}: pass axes_dim explicitly")
    return axes


def init_value(key: str, shape: tuple[int, ...], seed: int = BASE_SEED) -> torch.Tensor:
    """The float32 value of a parameter, by its name and shape, chosen to keep activations O(1) and finite.

    Matrices and convolutions ~ N(0, 1/fan_in), embeddings ~ N(0, EMBEDDING_STD), biases 0, norm gains 1.
    """
    import torch

    leaf = key.rsplit(".", 1)[-1]
    if _EMBEDDING_KEY.search(key):
        return _randn(key, shape, seed).mul_(EMBEDDING_STD)
    if leaf in _GATE_LEAVES:
        return torch.full(shape, GLIGEN_GATE)
    if len(shape) >= 2:
        return _randn(key, shape, seed).mul_(1 / math.sqrt(math.prod(shape[1:])))
    if leaf.endswith("bias"):
        return torch.zeros(shape)
    if leaf in ("weight", "scale"):  # LayerNorm / GroupNorm / RMSNorm gains: the only 1-D weights here
        return torch.ones(shape)
    return _randn(key, shape, seed).mul_(EMBEDDING_STD)  # other learned vectors (GLIGEN's null features)


def _randn(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    import torch

    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(shape, generator=generator)


# ---------------------------------------------------------------------------------------------------------
# Builders: {on-disk key: tensor} in the real file's layout, checked against ComfyUI's detection


def _meta() -> torch.device:
    import torch

    return torch.device("meta")


def _flux_config(guidance_embed: bool, depth: int, depth_single_blocks: int) -> dict:
    """FLUX.1's transformer config (as ComfyUI detects it) with the given depths."""
    return {**FLUX_DIT, "guidance_embed": guidance_embed, "depth": depth, "depth_single_blocks": depth_single_blocks}


def _flux(guidance_embed: bool, depth: int, depth_single_blocks: int) -> dict:
    """A FLUX.1 dev/schnell diffusion model file (UNETLoader): the transformer's keys with no prefix."""
    import comfy.supported_models as sm

    config = _flux_config(guidance_embed, depth, depth_single_blocks)
    config_class = sm.Flux if guidance_embed else sm.FluxSchnell
    tensors = dict(config_class(config).get_model({}, device=_meta()).diffusion_model.state_dict())
    _check_unet_detection(tensors, "", config_class, config)
    return tensors


def _chroma(depth: int, depth_single_blocks: int) -> dict:
    """A Chroma diffusion model file (UNETLoader): FLUX's blocks without guidance or vector inputs, modulations from
    the distilled guidance layer, whose sizes ComfyUI's detection fixes (in 64, hidden 5120, 5 layers, out 3072)."""
    import comfy.supported_models as sm

    config = {**CHROMA_DIT, "depth": depth, "depth_single_blocks": depth_single_blocks}
    tensors = dict(sm.Chroma(config).get_model({}, device=_meta()).diffusion_model.state_dict())
    _check_unet_detection(tensors, "", sm.Chroma, config)
    return tensors


def _qwen_image(num_layers: int) -> dict:
    """A Qwen-Image diffusion model file (UNETLoader): the transformer's keys with no prefix, full width."""
    import comfy.supported_models as sm

    config = {**QWEN_IMAGE_DIT, "num_layers": num_layers}
    tensors = dict(sm.QwenImage(config).get_model({}, device=_meta()).diffusion_model.state_dict())
    _check_unet_detection(tensors, "", sm.QwenImage, config)
    return tensors


def _zimage(n_layers: int) -> dict:
    """A Z-Image diffusion model file (UNETLoader): NextDiT's keys with no prefix, full width, `n_layers` joint
    layers and the class's 2 + 2 refiner layers (ComfyUI does not count those)."""
    import comfy.supported_models as sm

    config = {**ZIMAGE_UNET_CONFIG, "n_layers": n_layers, "pad_tokens_multiple": 32, "z_image_modulation": True}
    detected = {**ZIMAGE_DIT, **config}
    tensors = dict(sm.ZImage(detected).get_model({}, device=_meta()).diffusion_model.state_dict())
    _check_unet_detection(tensors, "", sm.ZImage, config)
    return tensors


def _wan21_vae(dim: int) -> dict:
    """The Wan 2.1 VAE that Qwen-Image ships as qwen_image_vae.safetensors (VAELoader): ComfyUI's VAE class takes
    this layout for decoder.middle.0.residual.0.gamma without the Wan 2.2 upsampler key, its width from the head."""
    import torch
    from comfy.ldm.wan.vae import WanVAE

    with torch.device("meta"):  # WanVAE takes no device argument
        vae = WanVAE(
            dim=dim,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            attn_scales=[],
            temperal_downsample=[False, True, True],
            dropout=0.0,
        )
    tensors = dict(vae.state_dict())
    if "decoder.middle.0.residual.0.gamma" not in tensors or tensors["decoder.head.0.gamma"].shape[0] != dim:
        raise RuntimeError("ComfyUI's WanVAE no longer has the Wan 2.1 key layout")
    return tensors


def _flux_lora(layers: list[str], rank: int, depth: int, depth_single_blocks: int) -> dict:
    """A LoRA for the tiny FLUX.1 (LoraLoaderModelOnly): `diffusion_model.<layer>.lora_up.weight` [out, rank],
    `.lora_down.weight` [rank, in] and `.alpha` (= rank), for each of `layers` (names of Linear layers)."""
    import torch
    import comfy.supported_models as sm

    config = _flux_config(True, depth, depth_single_blocks)
    flux_sd = sm.Flux(config).get_model({}, device=_meta()).diffusion_model.state_dict()
    tensors: dict = {}
    for layer in layers:
        out_dim, in_dim = flux_sd[f"{layer}.weight"].shape
        prefix = f"diffusion_model.{layer}"
        tensors[f"{prefix}.lora_up.weight"] = torch.empty(out_dim, rank, device=_meta())
        tensors[f"{prefix}.lora_down.weight"] = torch.empty(rank, in_dim, device=_meta())
        tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))
    return tensors


def _flux_controlnet_xlabs(depth: int) -> dict:
    """An XLabs FLUX ControlNet (ControlNetLoader) as wide as the tiny FLUX.1 dev: ComfyUI's loader takes
    `controlnet_blocks.0.weight` + `double_blocks.0.img_attn.norm.key_norm.scale` for this format and detects
    the trunk's config from the keys like a FLUX.1 file."""
    from comfy import model_detection
    from comfy.ldm.flux.controlnet import ControlNetFlux
    import comfy.ops

    config = _flux_config(True, depth, 0)
    model = ControlNetFlux(operations=comfy.ops.disable_weight_init, device=_meta(), **config)
    tensors = dict(model.state_dict())
    if "controlnet_blocks.0.weight" not in tensors or "input_hint_block.0.weight" not in tensors:
        raise RuntimeError("ControlNetFlux no longer has the XLabs key layout")
    detected = model_detection.model_config_from_unet(dict(tensors), "", True)
    if (
        detected is None
        or detected.unet_config.get("hidden_size") != FLUX_DIT["hidden_size"]
        or detected.unet_config.get("depth") != depth
    ):
        raise RuntimeError(f"ComfyUI does not detect this ControlNet as a {depth}-block FLUX.1 trunk")
    return tensors


def _flux2(depth: int, depth_single_blocks: int) -> dict:
    """A FLUX.2 dev diffusion model file (UNETLoader): the transformer's keys with no prefix, full width."""
    import comfy.supported_models as sm

    config = flux2_params({**FLUX2_DIT, "depth": depth, "depth_single_blocks": depth_single_blocks})
    tensors = dict(sm.Flux2(config).get_model({}, device=_meta()).diffusion_model.state_dict())
    _check_unet_detection(tensors, "", sm.Flux2, config)
    return tensors


def _sd3(depth: int) -> dict:
    """An SD3.5 Medium-like diffusion model file (UNETLoader): the MMDiT's keys with no prefix, `depth` joint
    blocks (so 64 x depth wide). pos_embed is a buffer the real file stores (learnt, O(1)): seeded N(0, 1) here."""
    import comfy.supported_models as sm

    config = {
        **SD3_DIT,
        "depth": depth,
        "context_embedder_config": {
            "target": "torch.nn.Linear",
            "params": {"in_features": 4096, "out_features": 64 * depth},
        },
    }
    tensors = dict(sm.SD3(config).get_model({}, device=_meta()).diffusion_model.state_dict())
    tensors["pos_embed"] = _randn("pos_embed", tuple(tensors["pos_embed"].shape), BASE_SEED)
    _check_unet_detection(tensors, "", sm.SD3, config)
    return tensors


def _sd3_checkpoint(depth: int) -> dict:
    """SD3.5 Medium as Stability ships it (CheckpointLoaderSimple): the MMDiT under model.diffusion_model. and the
    16-channel VAE under first_stage_model., no text encoders (ComfyUI's SD3.5 examples add a TripleCLIPLoader)."""
    vae = _kl_vae(latent_channels=16, quant_conv=False)
    return {
        **{f"model.diffusion_model.{k}": v for k, v in _sd3(depth).items()},
        **{f"first_stage_model.{k}": v for k, v in vae.items()},
    }


def _flux2_vae(latent_channels: int) -> dict:
    """FLUX.2's VAE (VAELoader) in the layout of flux2-vae.safetensors: the KL-f8 trunk with quant convs under
    encoder./decoder., and the latent batch norm (`bn.*`, which ComfyUI's VAE class reads as 2x2-patchified
    latents). Its running statistics are real values (mean 0, variance 1): random ones could be negative."""
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {**_KL_VAE, "z_channels": latent_channels, "batch_norm_latent": True}
    with torch.device("meta"):  # the class takes no device argument
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=latent_channels)
    tensors = {}
    for key, tensor in vae.state_dict().items():
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            key = ("encoder." if key.startswith("quant_conv.") else "decoder.") + key
        tensors[key] = tensor
    width = tensors["bn.running_mean"].shape[0]
    tensors.update({"bn.running_mean": torch.zeros(width), "bn.running_var": torch.ones(width)})
    tensors["bn.num_batches_tracked"] = torch.tensor(0)
    return tensors


def _checkpoint(family: str, unet: dict) -> dict:
    """A full checkpoint (CheckpointLoaderSimple): UNet, text encoders and 4-channel VAE, saved the way
    ComfyUI's own CheckpointSave lays it out (OpenCLIP keys for SDXL's CLIP-G)."""
    import comfy.supported_models as sm

    config_class = getattr(sm, family)
    model_config = config_class(unet)
    model = model_config.get_model({}, device=_meta())
    clip_sd = model_config.clip_target().clip(device=_meta()).state_dict()
    vae_sd = _kl_vae(latent_channels=4, quant_conv=True)
    tensors = model.state_dict_for_saving(clip_sd, vae_sd)
    _check_unet_detection(tensors, "model.diffusion_model.", config_class, unet)
    return tensors


def _clip_l() -> dict:
    """Full-size CLIP-L in the standalone text encoder layout (`text_model.*`). Its text_projection is kept
    so that no weight is left uninitialised whichever loader type reads it."""
    import comfy.sd1_clip

    tensors = dict(comfy.sd1_clip.SDClipModel(device=_meta()).transformer.state_dict())
    _check_text_encoder_detection(tensors, "CLIP_L")
    return tensors


def _t5xxl() -> dict:
    """Full-size T5-XXL encoder. Every tensor is stored as fp8 like the real file: ComfyUI reads the weight
    dtype from `encoder.final_layer_norm.weight`, so an fp16 norm would make it hold 9.5 GB of fp16."""
    import comfy.text_encoders.sd3_clip

    tensors = dict(comfy.text_encoders.sd3_clip.T5XXLModel(device=_meta()).transformer.state_dict())
    _check_text_encoder_detection(tensors, "T5_XXL")
    return tensors


def _kl_vae(latent_channels: int, quant_conv: bool) -> dict:
    """The KL-f8 VAE: with quant convs as in SD checkpoints, without them as in FLUX's ae.safetensors
    (ComfyUI's VAE class picks AutoencoderKL or AutoencodingEngine by that)."""
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine

    ddconfig = {**_KL_VAE, "z_channels": latent_channels}
    with torch.device("meta"):  # these classes take no device argument
        if quant_conv:
            vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=latent_channels)
        else:
            params = {"params": ddconfig}
            vae = AutoencodingEngine(
                regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", **params},
                decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", **params},
            )
    return dict(vae.state_dict())


def _gligen(unet: dict) -> dict:
    """A GLIGEN textbox model for the SD1.x UNet `unet`: one fuser per transformer block (ComfyUI feeds the
    n-th fuser to the n-th SpatialTransformer), keyed like the pruned SD1.4 file, plus the position net."""
    import torch
    import comfy.supported_models as sm
    from comfy.gligen import GatedSelfAttentionDense, PositionNet

    unet_sd = sm.SD15(unet).get_model({}, device=_meta()).diffusion_model.state_dict()
    tensors: dict = {}
    with torch.device("meta"):
        for prefix, width in _transformer_blocks(unet_sd):
            fuser = GatedSelfAttentionDense(width, GLIGEN_KEY_DIM, GLIGEN_HEADS, width // GLIGEN_HEADS)
            tensors.update({f"{prefix}.fuser.{k}": v for k, v in fuser.state_dict().items()})
        position_net = PositionNet(GLIGEN_KEY_DIM, GLIGEN_KEY_DIM)
        tensors.update({f"position_net.{k}": v for k, v in position_net.state_dict().items()})
    return tensors


def _transformer_blocks(unet_sd: dict) -> list[tuple[str, int]]:
    """(key prefix of its transformer block, query width) per SpatialTransformer, in UNet execution order."""
    section_order = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}
    found = []
    for key, tensor in unet_sd.items():
        match = re.fullmatch(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.?(\d*)\.proj_in\.weight", key)
        if match:
            section, first, second = match.groups()
            order = (section_order[section], int(first), int(second or 0))
            found.append((order, key[: -len("proj_in.weight")] + "transformer_blocks.0", tensor.shape[0]))
    if any(".transformer_blocks.1." in k for k in unet_sd):
        raise ValueError("GLIGEN needs transformer depth 1: ComfyUI's loader keys its fusers by UNet block")
    return [(prefix, width) for _, prefix, width in sorted(found)]


def _check_unet_detection(tensors: dict, prefix: str, config_class: type, config: dict) -> None:
    """ComfyUI must detect `config_class` and rebuild exactly `config` from these keys and shapes."""
    from comfy import model_detection

    detected = model_detection.model_config_from_unet(dict(tensors), prefix)
    if type(detected) is not config_class:
        raise RuntimeError(f"ComfyUI detects {type(detected).__name__}, not {config_class.__name__}")
    differs = {k: (v, detected.unet_config.get(k)) for k, v in config.items() if detected.unet_config.get(k) != v}
    if differs:
        raise RuntimeError(f"ComfyUI detects another {config_class.__name__} config (built, detected): {differs}")


def _check_text_encoder_detection(tensors: dict, expected: str) -> None:
    import comfy.sd

    detected = comfy.sd.detect_te_model(tensors)
    if detected is None or detected.name != expected:
        raise RuntimeError(f"ComfyUI detects text encoder {detected}, not {expected}")


# ---------------------------------------------------------------------------------------------------------
# Writing


def _generate(out: Path, model: TinyModel, log: Callable[[str], Any]) -> dict[str, Any]:
    import torch

    started = time.monotonic()
    log(f"writing {model.path} ...")
    tensors = model.build(**model.params)
    metadata = {"format": "pt", "rl_devkit_tiny_models": json.dumps(model.recipe(), sort_keys=True)}
    size = _write_safetensors(out / model.path, tensors, getattr(torch, model.dtype), metadata)
    log(f"wrote {model.path}: {size / 1e6:.0f} MB in {time.monotonic() - started:.0f} s")
    return {"size": size, "recipe": model.recipe()}


def _write_safetensors(path: Path, tensors: dict, dtype: torch.dtype, metadata: dict[str, str]) -> int:
    """Stream a safetensors file one tensor at a time (atomically: temp name, then rename); returns its size.

    Meta tensors get `init_value`; real ones (position ids, logit scale) keep their values. Floating-point
    tensors are stored as `dtype`. Larger items come first, as safetensors orders them, to keep alignment.
    """
    plan = [(key, t, dtype if t.is_floating_point() else t.dtype) for key, t in tensors.items()]
    plan.sort(key=lambda entry: (-entry[2].itemsize, entry[0]))
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, t, disk_dtype in plan:
        end = offset + t.numel() * disk_dtype.itemsize
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[str(disk_dtype).removeprefix("torch.")],
            "shape": list(t.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for key, t, disk_dtype in plan:
                f.write(_disk_bytes(key, t, disk_dtype))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return 8 + len(blob) + offset


def _disk_bytes(key: str, t: torch.Tensor, disk_dtype: torch.dtype) -> memoryview:
    """The tensor's bytes on disk (little-endian, as safetensors and x86/ARM hosts store them)."""
    import torch

    value = init_value(key, tuple(t.shape)) if t.is_meta else t.detach().cpu()
    if value.is_floating_point():
        value = value.float()
        # A value out of the disk dtype's range would turn into inf (fp16) or NaN (fp8) when cast.
        low, high = torch.aminmax(value)  # NaN fails the test below too
        if not max(-low, high) <= torch.finfo(disk_dtype).max:
            raise ValueError(f"{key}: values out of range for {disk_dtype}")
    return memoryview(value.to(disk_dtype).contiguous().reshape(-1).view(torch.uint8).numpy())


# ---------------------------------------------------------------------------------------------------------
# Manifest


def _read_manifest(out: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("version") != FORMAT_VERSION:
        return {"version": FORMAT_VERSION, "files": {}}
    return manifest


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out / MANIFEST_NAME)


def _is_complete(out: Path, model: TinyModel, manifest: dict[str, Any]) -> bool:
    entry = manifest["files"].get(model.path)
    if not entry or entry.get("recipe") != model.recipe():
        return False
    try:
        return (out / model.path).stat().st_size == entry.get("size")
    except OSError:
        return False


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One writer per folder at a time (two test processes may start together); a no-op without fcntl."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(out / ".tiny_models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rl_devkit.tiny_models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", help="folder laid out like ComfyUI's models/ (created if missing)")
    parser.add_argument("--no-t5", action="store_true", help="skip the 4.7 GB T5-XXL text encoder")
    args = parser.parse_args(argv)

    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True  # generation needs no accelerator; keep ComfyUI from initialising one
    started = time.monotonic()
    paths = ensure_tiny_models(
        args.out_dir, include_t5=not args.no_t5, log=lambda message: print(f"[tiny-models] {message}", flush=True)
    )
    print(f"[tiny-models] {len(paths)} models ready in {args.out_dir} ({time.monotonic() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
