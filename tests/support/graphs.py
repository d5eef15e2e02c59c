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
FLUX_LORA = "flux_tiny_lora.safetensors"
FLUX_CONTROLNET = "flux_tiny_controlnet_xlabs.safetensors"
CHROMA_UNET = "Chroma1-HD.safetensors"
QWEN_IMAGE_UNET = "qwen_image_bf16.safetensors"
QWEN_IMAGE_VAE = "qwen_image_vae.safetensors"
QWEN_IMAGE_SHIFT = 3.1  # ModelSamplingAuraFlow's shift in ComfyUI's Qwen-Image template
ZIMAGE_UNET = "z_image_turbo_bf16.safetensors"
ZIMAGE_SHIFT = 3.0  # ModelSamplingAuraFlow's shift in ComfyUI's Z-Image Turbo template (its VAE is FLUX's ae)


FLUX2_UNET = "flux2_dev_fp8mixed.safetensors"
FLUX2_VAE = "flux2-vae.safetensors"
FLUX2_GUIDANCE = 4.0  # FluxGuidance in ComfyUI's FLUX.2 template
SD3_UNET = "sd3.5_medium.safetensors"
SD3_SHIFT = 3.0  # ModelSamplingSD3's shift in ComfyUI's SD3.5 template


def graph() -> GraphBuilder:
    return GraphBuilder(prefix="")


# CLIP-L through ComfyUI's SD3 loader: the cond and pooled widths FLUX takes, without the minutes of T5-XXL encodes
FLUX_TEXT_STAND_IN = dict(clip_name=CLIP_L, type="sd3", device="default")


def flux_models(g: GraphBuilder, *, real_t5: bool = False, unet: str = FLUX_UNET):
    """(model, clip, vae) outputs. The fast text encoder is CLIP-L through the SD3 loader, whose cond and
    pooled widths match FLUX; `real_t5` uses DualCLIPLoader(type=flux)."""
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default")
    if real_t5:
        clip = g.node("DualCLIPLoader", clip_name1=CLIP_L, clip_name2=T5XXL, type="flux", device="default")
    else:
        clip = g.node("CLIPLoader", **FLUX_TEXT_STAND_IN)
    vae = g.node("VAELoader", vae_name=FLUX_VAE)
    return model.out(0), clip.out(0), vae.out(0)


def qwen_image_models(g: GraphBuilder, *, unet: str = QWEN_IMAGE_UNET):
    """(model, clip, vae) outputs as in ComfyUI's Qwen-Image template (UNETLoader -> ModelSamplingAuraFlow, the
    Wan 2.1 VAE), with the test-only Qwen-Image text encoder stand-in (tests/support/custom_nodes) for the 7B one."""
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default")
    shifted = g.node("ModelSamplingAuraFlow", model=model.out(0), shift=QWEN_IMAGE_SHIFT)
    clip = g.node("RLTest_QwenImageTextStandIn")
    vae = g.node("VAELoader", vae_name=QWEN_IMAGE_VAE)
    return shifted.out(0), clip.out(0), vae.out(0)


def zimage_models(g: GraphBuilder, *, unet: str = ZIMAGE_UNET):
    """(model, clip, vae) outputs as in ComfyUI's Z-Image Turbo template (UNETLoader -> ModelSamplingAuraFlow, FLUX's
    VAE), with the test-only Z-Image text encoder stand-in (tests/support/custom_nodes) for Qwen3 4B."""
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default")
    shifted = g.node("ModelSamplingAuraFlow", model=model.out(0), shift=ZIMAGE_SHIFT)
    clip = g.node("RLTest_ZImageTextStandIn")
    vae = g.node("VAELoader", vae_name=FLUX_VAE)
    return shifted.out(0), clip.out(0), vae.out(0)


def flux_text_to_image(
    *, width=256, height=256, steps=2, seed=0, prompt="a red apple on a table", real_t5: bool = False
) -> dict:
    g = graph()
    model, clip, vae = flux_models(g, real_t5=real_t5)
    positive = g.node("CLIPTextEncode", clip=clip, text=prompt)
    guided = g.node("FluxGuidance", conditioning=positive.out(0), guidance=3.5)
    negative = g.node("ConditioningZeroOut", conditioning=positive.out(0))
    latent = g.node("EmptySD3LatentImage", width=width, height=height, batch_size=1)
    sampled = g.node(
        "KSampler",
        model=model,
        seed=seed,
        steps=steps,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        positive=guided.out(0),
        negative=negative.out(0),
        latent_image=latent.out(0),
        denoise=1.0,
    )
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=vae)
    g.node("SaveImage", id="save", images=decoded.out(0), filename_prefix="flux")
    return g.finalize()


def sdxl_text_to_image(*, width=256, height=256, steps=2, seed=0, prompt="a red apple on a table") -> dict:
    g = graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SDXL)
    positive = g.node("CLIPTextEncode", clip=ckpt.out(1), text=prompt)
    negative = g.node("CLIPTextEncode", clip=ckpt.out(1), text="")
    latent = g.node("EmptyLatentImage", width=width, height=height, batch_size=1)
    sampled = g.node(
        "KSampler",
        model=ckpt.out(0),
        seed=seed,
        steps=steps,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        positive=positive.out(0),
        negative=negative.out(0),
        latent_image=latent.out(0),
        denoise=1.0,
    )
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=ckpt.out(2))
    g.node("SaveImage", id="save", images=decoded.out(0), filename_prefix="sdxl")
    return g.finalize()


def region_layout_preview(
    *, width=128, height=96, regions: list[dict], base_prompt="a scene", background_prompt=""
) -> dict:
    """The editor node (its JSON state as the browser would save it) -> Region Overlay -> SaveImage."""
    import json

    g = graph()
    state = json.dumps({"version": 1, "regions": regions})
    layout = g.node(
        "RL_RegionLayout",
        id="layout",
        width=width,
        height=height,
        base_prompt=base_prompt,
        background_prompt=background_prompt,
        editor_state=state,
    )
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


def regional_flux(
    *,
    width=192,
    height=128,
    steps=2,
    seed=0,
    batch=1,
    batch_index=None,
    cfg=1.0,
    negative=None,
    base_prompt="a still life on a wooden table",
    prompts=REGION_PROMPTS,
    boxes=None,
    background_prompt="a photo",
    base_ratio=0.2,
    control_steps=10,
    double_blocks="all",
    single_blocks="all",
    feather=0.0,
    patch=True,
    real_t5=False,
    unet=FLUX_UNET,
    latent_node="EmptySD3LatentImage",
    overlay=False,
    mask_value=1.0,
    lora=None,
    lora_after_patch=False,
    controlnet=None,
    hint_color=0x3070B0,
    loras_before=(),
    regional_loras=(),
    save_latent=False,
    models=None,
    guidance=3.5,
) -> dict:
    """Regional FLUX text-to-image on the tiny models; `patch=False` gives the plain graph with the same prompt
    (CLIPTextEncode of base_prompt, unpatched model). `batch_index` picks one item of the latent batch (its noise
    is the one it gets inside the batch). `lora` (a strength) adds LoraLoaderModelOnly with the tiny FLUX LoRA
    right after the UNETLoader, or after the patcher with `lora_after_patch`; `controlnet` (a strength) applies the
    tiny XLabs FLUX ControlNet with a solid `hint_color` image to both prompts (ControlNetApplyAdvanced);
    `save_latent` also saves the sampled latent (SaveLatent "save_latent"). `loras_before`: (file, strength)
    pairs, LoraLoaderModelOnly in a chain before the patcher; `regional_loras`: (file, strength, region)
    triples, RL_RegionalLora in a chain after it (ids regional_lora_0, ...). `models(g, unet=...)` gives
    (model, clip, vae) of another family (default: flux_models); `guidance` None leaves out FluxGuidance."""
    g = graph()
    if models is None:
        model, clip, vae = flux_models(g, real_t5=real_t5, unet=unet)
    else:
        model, clip, vae = models(g, unet=unet)

    def add_lora(model):
        return g.node("LoraLoaderModelOnly", id="lora", model=model, lora_name=FLUX_LORA, strength_model=lora).out(0)

    if lora is not None and not lora_after_patch:
        model = add_lora(model)
    for name, strength in loras_before:
        model = g.node("LoraLoaderModelOnly", model=model, lora_name=name, strength_model=strength).out(0)
    if boxes is None:
        boxes = [(0, 0, width // 2, height), (width // 2, 0, width - width // 2, height // 2)][: len(prompts)]
    if patch:
        masks = mask_batch(g, [mask_rect(g, width, height, b, mask_value) for b in boxes])
        regions = g.node(
            "RL_RegionsFromMasks",
            masks=masks,
            prompts="\n".join(prompts),
            width=width,
            height=height,
            base_prompt=base_prompt,
            background_prompt=background_prompt,
            feather=0.0,
        )
        encoded = g.node("RL_RegionalPromptEncode", clip=clip, regions=regions.out(0))
        positive = encoded.out(0)
        model = g.node(
            "RL_RegionalFluxPatch",
            model=model,
            regional_cond=encoded.out(1),
            base_ratio=base_ratio,
            control_steps=control_steps,
            double_blocks=double_blocks,
            single_blocks=single_blocks,
            feather=feather,
        ).out(0)
        for i, (name, strength, region) in enumerate(regional_loras):
            model = g.node(
                "RL_RegionalLora",
                id=f"regional_lora_{i}",
                model=model,
                lora_name=name,
                strength_model=strength,
                region=region,
            ).out(0)
    else:
        positive = g.node("CLIPTextEncode", clip=clip, text=base_prompt).out(0)
    if lora is not None and lora_after_patch:
        model = add_lora(model)
    guided = positive if guidance is None else g.node("FluxGuidance", conditioning=positive, guidance=guidance).out(0)
    if negative is None:
        neg = g.node("ConditioningZeroOut", conditioning=positive).out(0)
    else:
        neg = g.node("CLIPTextEncode", clip=clip, text=negative).out(0)
    if controlnet is not None:
        net = g.node("ControlNetLoader", control_net_name=FLUX_CONTROLNET)
        hint = g.node("EmptyImage", width=width, height=height, batch_size=1, color=hint_color)
        applied = g.node(
            "ControlNetApplyAdvanced",
            id="controlnet",
            positive=guided,
            negative=neg,
            control_net=net.out(0),
            image=hint.out(0),
            strength=controlnet,
            start_percent=0.0,
            end_percent=1.0,
        )
        guided, neg = applied.out(0), applied.out(1)
    latent = g.node(latent_node, width=width, height=height, batch_size=batch).out(0)
    if batch_index is not None:
        latent = g.node("LatentFromBatch", samples=latent, batch_index=batch_index, length=1).out(0)
    sampled = g.node(
        "KSampler",
        id="sampler",
        model=model,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler_name="euler",
        scheduler="simple",
        positive=guided,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=vae)
    g.node("SaveImage", id="save", images=decoded.out(0), filename_prefix="regional_flux")
    if save_latent:
        g.node("SaveLatent", id="save_latent", samples=sampled.out(0), filename_prefix="regional_latent")
    if overlay and patch:
        tinted = g.node("RL_RegionOverlay", image=decoded.out(0), regions=regions.out(0), opacity=0.4)
        g.node("SaveImage", id="overlay", images=tinted.out(0), filename_prefix="regional_flux_overlay")
    return g.finalize()


def regional_qwen_image(**kwargs) -> dict:
    """regional_flux's graph on the tiny Qwen-Image (its template's loaders and shift, no FluxGuidance)."""
    return regional_flux(**{"unet": QWEN_IMAGE_UNET, "models": qwen_image_models, "guidance": None, **kwargs})


def regional_zimage(**kwargs) -> dict:
    """regional_flux's graph on the tiny Z-Image (its template's loaders and shift, no FluxGuidance)."""
    return regional_flux(**{"unet": ZIMAGE_UNET, "models": zimage_models, "guidance": None, **kwargs})


def lsregen_pipeline(
    *,
    width=1536,
    height=1024,
    prior_size=512,
    steps=30,
    inversion_steps=5,
    fraction=0.1,
    gamma=0.2,
    seed=0,
    prior_seed=0,
    method="inversion",
) -> GraphBuilder:
    """The LSReGen pipeline: two mask regions -> GLIGEN prior (SD1.5) -> ImageScale -> VAEEncode (SDXL) ->
    inversion -> backward-guided SDXL -> save, plus a region overlay. Node ids are stable names."""
    g = graph()
    sd15 = g.node("CheckpointLoaderSimple", id="sd15", ckpt_name=SD15)
    gligen = g.node("GLIGENLoader", id="gligen", gligen_name=GLIGEN)
    sdxl = g.node("CheckpointLoaderSimple", id="sdxl", ckpt_name=SDXL)
    # Region 1: the left 40 % of the picture; region 2: the rest (canvas minus region 1).
    canvas = g.node("SolidMask", id="canvas", value=1.0, width=width, height=height)
    left_solid = g.node("SolidMask", id="left_solid", value=1.0, width=width * 2 // 5, height=height)
    empty = g.node("SolidMask", id="empty", value=0.0, width=width, height=height)
    left = g.node(
        "MaskComposite", id="left", destination=empty.out(0), source=left_solid.out(0), x=0, y=0, operation="add"
    )
    right = g.node(
        "MaskComposite", id="right", destination=canvas.out(0), source=left_solid.out(0), x=0, y=0, operation="subtract"
    )
    left_img = g.node("MaskToImage", id="left_img", mask=left.out(0))
    right_img = g.node("MaskToImage", id="right_img", mask=right.out(0))
    batch = g.node("ImageBatch", id="batch", image1=left_img.out(0), image2=right_img.out(0))
    masks = g.node("ImageToMask", id="masks", image=batch.out(0), channel="red")
    regions = g.node(
        "RL_RegionsFromMasks",
        id="regions",
        masks=masks.out(0),
        prompts="a red vintage car\na large oak tree",
        width=width,
        height=height,
        base_prompt="a country road at sunset, photo",
        background_prompt="",
        feather=0.0,
    )
    prior = g.node(
        "RL_GligenLayoutPrior",
        id="prior",
        model=sd15.out(0),
        clip=sd15.out(1),
        vae=sd15.out(2),
        gligen=gligen.out(0),
        prompt="",
        negative="blurry, lowres",
        seed=prior_seed,
        steps=20,
        cfg=7.5,
        sampler_name="euler",
        scheduler="normal",
        width=prior_size,
        height=prior_size,
        regions=regions.out(0),
        boxes="",
    )
    g.node("SaveImage", id="save_prior", images=prior.out(0), filename_prefix="lsregen/prior")
    upscaled = g.node(
        "ImageScale",
        id="upscale",
        image=prior.out(0),
        upscale_method="bicubic",
        width=width,
        height=height,
        crop="disabled",
    )
    encoded = g.node("VAEEncode", id="encode", pixels=upscaled.out(0), vae=sdxl.out(2))
    positive = g.node(
        "CLIPTextEncode",
        id="positive",
        clip=sdxl.out(1),
        text="a red vintage car parked beside a large oak tree on a country road at sunset, photo",
    )
    negative = g.node("CLIPTextEncode", id="negative", clip=sdxl.out(1), text="blurry, lowres")
    empty_prompt = g.node("CLIPTextEncode", id="empty_prompt", clip=sdxl.out(1), text="")
    inversion = g.node(
        "RL_LatentInversion",
        id="inversion",
        model=sdxl.out(0),
        positive=empty_prompt.out(0),
        latent=encoded.out(0),
        method=method,
        steps=steps,
        scheduler="normal",
        guidance_fraction=fraction,
        inversion_steps=inversion_steps,
        seed=seed,
        refine=0,
    )
    latent = g.node("EmptyLatentImage", id="latent", width=width, height=height, batch_size=1)
    sampled = g.node(
        "RL_BackwardGuidanceKSampler",
        id="guided",
        model=sdxl.out(0),
        seed=seed,
        steps=steps,
        cfg=7.0,
        sampler_name="euler",
        scheduler="normal",
        positive=positive.out(0),
        negative=negative.out(0),
        latent_image=latent.out(0),
        denoise=1.0,
        trajectory=inversion.out(0),
        guidance_scale=gamma,
        guidance_fraction=fraction,
        guidance_iterations=1,
        feature="identity",
        distance="squared_l2",
        regions=regions.out(0),
    )
    decoded = g.node("VAEDecode", id="decode", samples=sampled.out(0), vae=sdxl.out(2))
    g.node("SaveImage", id="save", images=decoded.out(0), filename_prefix="lsregen/result")
    overlay = g.node("RL_RegionOverlay", id="overlay", image=decoded.out(0), regions=regions.out(0), opacity=0.4)
    g.node("SaveImage", id="save_overlay", images=overlay.out(0), filename_prefix="lsregen/overlay")
    return g


def flux2_models(g: GraphBuilder, *, unet: str = FLUX2_UNET):
    """(model, clip, vae) outputs as in ComfyUI's FLUX.2 template (UNETLoader, the FLUX.2 VAE), with the test-only
    FLUX.2 text encoder stand-in (tests/support/custom_nodes) for Mistral 3 Small 24B."""
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default")
    clip = g.node("RLTest_Flux2TextStandIn")
    vae = g.node("VAELoader", vae_name=FLUX2_VAE)
    return model.out(0), clip.out(0), vae.out(0)


def regional_flux2(**kwargs) -> dict:
    """regional_flux's graph on the tiny FLUX.2 (its template's loaders, latent and guidance)."""
    defaults = dict(unet=FLUX2_UNET, models=flux2_models, guidance=FLUX2_GUIDANCE, latent_node="EmptyFlux2LatentImage")
    return regional_flux(**{**defaults, **kwargs})


def sd3_models(g: GraphBuilder, *, unet: str = SD3_UNET):
    """(model, clip, vae) outputs for the tiny SD3.5 Medium-like MMDiT: UNETLoader -> ModelSamplingSD3 (shift 3),
    ComfyUI's SD3 text encoder on CLIP-L alone (CLIPLoader type sd3: CLIP-L widened to 4096, the pooled CLIP-G
    half zero; a real CLIP-G is 32 layers at 1280 whatever the file holds), and the 16-channel KL VAE that FLUX.1
    and SD3 share (ae.safetensors)."""
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default")
    shifted = g.node("ModelSamplingSD3", model=model.out(0), shift=SD3_SHIFT)
    clip = g.node("CLIPLoader", clip_name=CLIP_L, type="sd3", device="default")
    vae = g.node("VAELoader", vae_name=FLUX_VAE)
    return shifted.out(0), clip.out(0), vae.out(0)


def regional_sd3(**kwargs) -> dict:
    """regional_flux's graph on the tiny SD3.5 (its template's shift and latent, no FluxGuidance)."""
    return regional_flux(**{"unet": SD3_UNET, "models": sd3_models, "guidance": None, **kwargs})
