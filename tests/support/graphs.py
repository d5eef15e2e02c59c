"""API-format prompts for the tiny models, built with ComfyUI's own GraphBuilder."""

from __future__ import annotations

from comfy_execution.graph_utils import GraphBuilder

FLUX_UNET = "flux1-dev.safetensors"
FLUX_SCHNELL_UNET = "flux1-schnell.safetensors"
CLIP_L = "clip_l.safetensors"
T5XXL = "t5xxl_fp8_e4m3fn.safetensors"
FLUX_VAE = "ae.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
SD15 = "v1-5-pruned-emaonly.safetensors"
GLIGEN = "gligen_sd14_textbox_pruned.safetensors"


def graph() -> GraphBuilder:
    return GraphBuilder(prefix="")


def flux_models(g: GraphBuilder, *, real_t5: bool = False, unet: str = FLUX_UNET):
    """(model, clip, vae) outputs. The fast text encoder is CLIP-L through the SD3 loader, whose cond and
    pooled widths match FLUX (notes/host_and_tiny_models.md); `real_t5` uses DualCLIPLoader(type=flux)."""
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default")
    if real_t5:
        clip = g.node("DualCLIPLoader", clip_name1=CLIP_L, clip_name2=T5XXL, type="flux", device="default")
    else:
        clip = g.node("CLIPLoader", clip_name=CLIP_L, type="sd3", device="default")
    vae = g.node("VAELoader", vae_name=FLUX_VAE)
    return model.out(0), clip.out(0), vae.out(0)


def flux_text_to_image(*, width=256, height=256, steps=2, seed=0, prompt="a red apple on a table",
                       real_t5: bool = False) -> dict:
    g = graph()
    model, clip, vae = flux_models(g, real_t5=real_t5)
    positive = g.node("CLIPTextEncode", clip=clip, text=prompt)
    guided = g.node("FluxGuidance", conditioning=positive.out(0), guidance=3.5)
    negative = g.node("ConditioningZeroOut", conditioning=positive.out(0))
    latent = g.node("EmptySD3LatentImage", width=width, height=height, batch_size=1)
    sampled = g.node("KSampler", model=model, seed=seed, steps=steps, cfg=1.0, sampler_name="euler",
                     scheduler="simple", positive=guided.out(0), negative=negative.out(0),
                     latent_image=latent.out(0), denoise=1.0)
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=vae)
    g.node("SaveImage", id="save", images=decoded.out(0), filename_prefix="flux")
    return g.finalize()


def sdxl_text_to_image(*, width=256, height=256, steps=2, seed=0, prompt="a red apple on a table") -> dict:
    g = graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SDXL)
    positive = g.node("CLIPTextEncode", clip=ckpt.out(1), text=prompt)
    negative = g.node("CLIPTextEncode", clip=ckpt.out(1), text="")
    latent = g.node("EmptyLatentImage", width=width, height=height, batch_size=1)
    sampled = g.node("KSampler", model=ckpt.out(0), seed=seed, steps=steps, cfg=5.0, sampler_name="euler",
                     scheduler="normal", positive=positive.out(0), negative=negative.out(0),
                     latent_image=latent.out(0), denoise=1.0)
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=ckpt.out(2))
    g.node("SaveImage", id="save", images=decoded.out(0), filename_prefix="sdxl")
    return g.finalize()


def region_layout_preview(*, width=128, height=96, regions: list[dict], base_prompt="a scene",
                          background_prompt="") -> dict:
    """The editor node (its JSON state as the browser would save it) -> Region Overlay -> SaveImage."""
    import json

    g = graph()
    state = json.dumps({"version": 1, "regions": regions})
    layout = g.node("RL_RegionLayout", id="layout", width=width, height=height, base_prompt=base_prompt,
                    background_prompt=background_prompt, editor_state=state)
    canvas = g.node("EmptyImage", width=width, height=height, batch_size=1, color=0x808080)
    tinted = g.node("RL_RegionOverlay", image=canvas.out(0), regions=layout.out(0), opacity=0.6)
    g.node("SaveImage", id="save", images=tinted.out(0), filename_prefix="layout")
    return g.finalize()


# ---------------------------------------------------------------------------------------------------------
# Regional FLUX

REGION_PROMPTS = ("a red apple", "a blue ceramic cup")


def mask_rect(g: GraphBuilder, width: int, height: int, box: tuple[int, int, int, int], value: float = 1.0):
    """A MASK that is `value` inside box (x, y, w, h) and 0 elsewhere, from core nodes."""
    x, y, w, h = box
    base = g.node("SolidMask", value=0.0, width=width, height=height)
    inside = g.node("SolidMask", value=value, width=w, height=h)
    return g.node("MaskComposite", destination=base.out(0), source=inside.out(0), x=x, y=y, operation="add").out(0)


def mask_batch(g: GraphBuilder, masks: list):
    """One MASK batch from single masks (via images: core has no mask-batch node)."""
    batch = g.node("MaskToImage", mask=masks[0]).out(0)
    for mask in masks[1:]:
        batch = g.node("ImageBatch", image1=batch, image2=g.node("MaskToImage", mask=mask).out(0)).out(0)
    return g.node("ImageToMask", image=batch, channel="red").out(0)


def regional_flux(*, width=192, height=128, steps=2, seed=0, batch=1, batch_index=None, cfg=1.0, negative=None,
                  base_prompt="a still life on a wooden table", prompts=REGION_PROMPTS, boxes=None,
                  background_prompt="a photo", base_ratio=0.2, control_steps=10, double_blocks="all",
                  single_blocks="all", feather=0.0, patch=True, real_t5=False, unet=FLUX_UNET,
                  latent_node="EmptySD3LatentImage", overlay=False, mask_value=1.0) -> dict:
    """Regional FLUX text-to-image on the tiny models; `patch=False` gives the plain graph with the same prompt
    (CLIPTextEncode of base_prompt, unpatched model). `batch_index` picks one item of the latent batch (its noise
    is the one it gets inside the batch)."""
    g = graph()
    model, clip, vae = flux_models(g, real_t5=real_t5, unet=unet)
    if boxes is None:
        boxes = [(0, 0, width // 2, height), (width // 2, 0, width - width // 2, height // 2)][:len(prompts)]
    if patch:
        masks = mask_batch(g, [mask_rect(g, width, height, b, mask_value) for b in boxes])
        regions = g.node("RL_RegionsFromMasks", masks=masks, prompts="\n".join(prompts), width=width, height=height,
                         base_prompt=base_prompt, background_prompt=background_prompt, feather=0.0)
        encoded = g.node("RL_RegionalPromptEncode", clip=clip, regions=regions.out(0))
        positive = encoded.out(0)
        model = g.node("RL_RegionalFluxPatch", model=model, regional_cond=encoded.out(1), base_ratio=base_ratio,
                       control_steps=control_steps, double_blocks=double_blocks, single_blocks=single_blocks,
                       feather=feather).out(0)
    else:
        positive = g.node("CLIPTextEncode", clip=clip, text=base_prompt).out(0)
    guided = g.node("FluxGuidance", conditioning=positive, guidance=3.5)
    if negative is None:
        neg = g.node("ConditioningZeroOut", conditioning=positive).out(0)
    else:
        neg = g.node("CLIPTextEncode", clip=clip, text=negative).out(0)
    latent = g.node(latent_node, width=width, height=height, batch_size=batch).out(0)
    if batch_index is not None:
        latent = g.node("LatentFromBatch", samples=latent, batch_index=batch_index, length=1).out(0)
    sampled = g.node("KSampler", id="sampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                     scheduler="simple", positive=guided.out(0), negative=neg, latent_image=latent, denoise=1.0)
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=vae)
    g.node("SaveImage", id="save", images=decoded.out(0), filename_prefix="regional_flux")
    if overlay and patch:
        tinted = g.node("RL_RegionOverlay", image=decoded.out(0), regions=regions.out(0), opacity=0.4)
        g.node("SaveImage", id="overlay", images=tinted.out(0), filename_prefix="regional_flux_overlay")
    return g.finalize()
