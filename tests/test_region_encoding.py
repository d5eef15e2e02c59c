"""Region prompts are encoded the way ComfyUI encodes each prompt alone for FLUX (the real tiny T5-XXL through
ComfyUI's own CLIP loader), so a region's embedding never depends on the other regions' prompts."""

from __future__ import annotations

import pytest
import torch

LONG_NEIGHBOUR = " ".join(["an old stone lighthouse on a rocky cliff above a stormy grey sea with gulls"] * 4)


@pytest.fixture(scope="module")
def flux_clip(tiny_models):
    import comfy.sd

    te = tiny_models / "text_encoders"
    return comfy.sd.load_clip(
        ckpt_paths=[str(te / "clip_l.safetensors"), str(te / "t5xxl_fp8_e4m3fn.safetensors")],
        clip_type=comfy.sd.CLIPType.FLUX,
    )


@pytest.mark.slow
def test_region_embedding_does_not_depend_on_its_neighbours(flux_clip):
    from regional_layout.attention_patches.regional_cond import encode_texts

    prompt = "a red fox sitting in fresh snow"
    assert len(LONG_NEIGHBOUR.split()) == 60
    with_short = encode_texts(flux_clip, [prompt, "a blue bird"])
    with_long = encode_texts(flux_clip, [prompt, LONG_NEIGHBOUR])
    alone = flux_clip.encode_from_tokens(flux_clip.tokenize(prompt))  # what CLIPTextEncode gives FLUX
    real = len(flux_clip.tokenize(prompt, tokenizer_options={"t5xxl_min_length": 0})["t5xxl"][0])
    assert alone.shape[1] == 256 > real  # ComfyUI pads FLUX's T5 to 256 tokens; the region keeps its real ones
    assert with_short[0].shape == with_long[0].shape == (1, real, 4096)
    assert with_long[1].shape[1] > with_short[1].shape[1]  # the neighbours keep their own lengths
    torch.testing.assert_close(with_short[0], with_long[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(with_short[0], alone[:, :real], atol=1e-6, rtol=1e-6)
    assert not torch.equal(with_short[0], with_short[1][:, :real])  # a different prompt gives another embedding
