"""The tiny models on disk are what ComfyUI's own detection takes for the real ones, and are reproducible."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from rl_devkit import tiny_models as tm

SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "I64": torch.int64,
}


def meta_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's keys, shapes and dtypes as meta tensors: what model detection reads, without the bytes."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return {k: torch.empty(v["shape"], dtype=SAFETENSORS_DTYPES[v["dtype"]], device="meta") for k, v in header.items()}


@pytest.fixture(scope="module")
def files(tiny_models) -> dict[str, Path]:
    return {m.name: tiny_models / m.path for m in tm.tiny_models()}


@pytest.mark.parametrize(
    "name, expected, guidance",
    [
        ("flux1-dev.safetensors", "Flux", True),
        ("flux1-schnell.safetensors", "FluxSchnell", False),
    ],
)
def test_flux_files_are_detected_as_flux(files, name, expected, guidance):
    from comfy import model_detection

    config = model_detection.model_config_from_unet(meta_state_dict(files[name]), "")
    assert type(config).__name__ == expected
    assert config.unet_config["hidden_size"] == 3072 and config.unet_config["guidance_embed"] is guidance


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sd_xl_base_1.0.safetensors", "SDXL"),
        ("v1-5-pruned-emaonly.safetensors", "SD15"),
    ],
)
def test_checkpoints_are_detected_with_their_text_encoders(files, name, expected):
    from comfy import model_detection

    sd = meta_state_dict(files[name])
    config = model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    assert type(config).__name__ == expected
    clip_keys = [k for k in sd if k.startswith("conditioner.") or k.startswith("cond_stage_model.")]
    vae_keys = [k for k in sd if k.startswith("first_stage_model.")]
    assert clip_keys and vae_keys, "a checkpoint carries its text encoder(s) and VAE"
    if expected == "SDXL":
        assert any("conditioner.embedders.1.model" in k for k in clip_keys), (
            "SDXL needs its second (OpenCLIP-G) encoder"
        )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("clip_l.safetensors", "CLIP_L"),
        ("t5xxl_fp8_e4m3fn.safetensors", "T5_XXL"),
    ],
)
def test_text_encoders_are_detected(files, name, expected):
    import comfy.sd

    assert comfy.sd.detect_te_model(meta_state_dict(files[name])).name == expected


def test_flux_vae_has_16_latent_channels(files):
    sd = meta_state_dict(files["ae.safetensors"])
    assert sd["decoder.conv_in.weight"].shape[1] == 16
    assert not any(k.startswith("quant_conv") for k in sd), "FLUX's ae.safetensors has no quant convs"


def test_qwen_image_files_are_detected(files):
    """The Qwen-Image transformer as ComfyUI's detection reads it (full width, 1 block) and its Wan 2.1 VAE as
    ComfyUI's VAE class takes it (16 latent channels on a time axis, 8x down, the real base width)."""
    import comfy.sd
    import comfy.utils
    from comfy import model_detection

    config = model_detection.model_config_from_unet(meta_state_dict(files["qwen_image_bf16.safetensors"]), "")
    assert type(config).__name__ == "QwenImage"
    assert config.unet_config["num_layers"] == tm.QWEN_IMAGE_BLOCKS and config.unet_config["in_channels"] == 64
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(files["qwen_image_vae.safetensors"])))
    assert type(vae.first_stage_model).__module__ == "comfy.ldm.wan.vae"
    assert (vae.latent_channels, vae.latent_dim, vae.downscale_index_formula) == (16, 3, (4, 8, 8))


def test_flux2_files_are_detected(files):
    """The FLUX.2 dev transformer as ComfyUI's detection reads it (full width 6144, 1 double + 1 single block, text
    width 15360) and its VAE as ComfyUI's VAE class takes it (32 channels, batch-normed in 2x2 patches: 128 per
    latent pixel, 16x down)."""
    import comfy.sd
    import comfy.utils
    from comfy import model_detection

    config = model_detection.model_config_from_unet(meta_state_dict(files["flux2_dev_fp8mixed.safetensors"]), "")
    assert type(config).__name__ == "Flux2"
    unet = config.unet_config
    assert (unet["hidden_size"], unet["context_in_dim"], unet["in_channels"]) == (6144, 15360, 128)
    assert (unet["depth"], unet["depth_single_blocks"]) == (tm.FLUX2_DOUBLE_BLOCKS, tm.FLUX2_SINGLE_BLOCKS)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(files["flux2-vae.safetensors"])))
    assert (vae.latent_channels, vae.downscale_ratio) == (128, 16)


def test_sd3_files_are_detected(files, tiny_models):
    """The SD3.5 Medium-like MMDiT as UNETLoader's detection reads it (SD3, 2 joint blocks, so 128 wide; the real
    text width 4096 and pooled width 2048; image-only attention in block 0; RMS q/k norms) and the FLUX.1 VAE file
    as SD3's VAE: the same 16-channel KL VAE without quant convs (the latent scale and shift are the model's), so
    it decodes an SD3 latent 8x up. The checkpoint of the same name (CheckpointLoaderSimple, the shipped SD3.5
    workflow) holds the same MMDiT under model.diffusion_model."""
    import comfy.latent_formats
    import comfy.sd
    import comfy.utils
    from comfy import model_detection

    config = model_detection.model_config_from_unet(meta_state_dict(tiny_models / tm.SD35_UNET_FILE), "")
    assert type(config).__name__ == "SD3"
    checkpoint = meta_state_dict(tiny_models / tm.SD35_CHECKPOINT_FILE)
    in_checkpoint = model_detection.model_config_from_unet(checkpoint, "model.diffusion_model.")
    assert type(in_checkpoint).__name__ == "SD3" and in_checkpoint.unet_config == config.unet_config
    assert "first_stage_model.decoder.conv_in.weight" in checkpoint
    unet = config.unet_config
    assert (unet["depth"], unet["adm_in_channels"], unet["in_channels"]) == (tm.SD3_DEPTH, 2048, 16)
    assert unet["context_embedder_config"]["params"] == {"in_features": 4096, "out_features": 64 * tm.SD3_DEPTH}
    assert (unet["x_block_self_attn_layers"], unet["qk_norm"]) == ([0], "rms")
    assert config.latent_format.latent_channels == 16 and isinstance(config.latent_format, comfy.latent_formats.SD3)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(files["ae.safetensors"])))
    assert (vae.latent_channels, vae.downscale_ratio) == (16, 8)
    decoded = vae.decode(torch.randn(1, 16, 3, 5, generator=torch.Generator().manual_seed(0)))
    assert decoded.shape == (1, 24, 40, 3) and torch.isfinite(decoded).all()


def test_zimage_file_is_detected(files):
    """The Z-Image transformer as ComfyUI's detection reads it: the Z-Image branch (full width, pad tokens) with
    1 joint layer; the refiners are the class default (2 + 2), so the file must hold both of each."""
    from comfy import model_detection

    sd = meta_state_dict(files["z_image_turbo_bf16.safetensors"])
    config = model_detection.model_config_from_unet(sd, "")
    assert type(config).__name__ == "ZImage"
    assert config.unet_config["n_layers"] == tm.ZIMAGE_LAYERS and config.unet_config["pad_tokens_multiple"] == 32
    assert {"noise_refiner.1.attention.qkv.weight", "context_refiner.1.attention.qkv.weight"} <= set(sd)


def test_gligen_loads_with_comfyui_loader(files):
    import comfy.sd

    gligen = comfy.sd.load_gligen(str(files["gligen_sd14_textbox_pruned.safetensors"]))
    unet = meta_state_dict(files["v1-5-pruned-emaonly.safetensors"])
    transformer_blocks = [k for k in unet if k.startswith("model.diffusion_model.") and k.endswith("proj_in.weight")]
    # ComfyUI hands the n-th fuser to the n-th transformer block of the UNet: the counts must match
    assert len(gligen.model.module_list) == len(transformer_blocks) > 0


def test_manifest_matches_files(tiny_models, files):
    manifest = json.loads((tiny_models / tm.MANIFEST_NAME).read_text())
    for model in tm.tiny_models():
        entry = manifest["files"][model.path]
        assert entry["recipe"] == model.recipe()
        assert (tiny_models / model.path).stat().st_size == entry["size"]


def test_small_flux_is_seeded():
    a, b, c = tm.small_flux(seed=0), tm.small_flux(seed=0), tm.small_flux(seed=1)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
