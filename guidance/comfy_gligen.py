"""Host adapter: the GLIGEN layout prior, SD1.x + ComfyUI's own GLIGEN position conditioning (as GLIGENTextBoxApply
builds it), sampled like KSampler. Only checks and conditioning live here; GLIGEN itself is comfy.gligen."""

from __future__ import annotations

from ..layout.boxes import Box, gligen_position
from .comfy_sampling import sample


def check_sd1_model(model) -> None:
    config = model.model.model_config.unet_config
    latent = type(model.model.latent_format).__name__
    if latent != "SD15" or config.get("context_dim") != 768 or config.get("adm_in_channels"):
        raise ValueError(f"model: GLIGEN textbox weights work with SD1.x models only, got "
                         f"{type(model.model).__name__} ({latent} latents, context {config.get('context_dim')}): "
                         "load an SD1.5 checkpoint for the layout prior")


def check_gligen_matches(model, gligen) -> None:
    from comfy.ldm.modules.attention import SpatialTransformer

    fusers = list(gligen.model.module_list)
    blocks = [m for m in model.model.diffusion_model.modules() if isinstance(m, SpatialTransformer)]
    key_dims = {fuser.linear.weight.shape[1] for fuser in fusers}
    query_dims = [fuser.linear.weight.shape[0] for fuser in fusers]
    block_dims = [block.proj_in.weight.shape[0] for block in blocks]
    if len(fusers) != len(blocks) or key_dims != {768} or query_dims != block_dims:
        raise ValueError(f"gligen: these GLIGEN weights ({len(fusers)} fusers, widths {query_dims}) do not fit the "
                         f"SD1.x model ({len(blocks)} transformer blocks, widths {block_dims}): load the GLIGEN "
                         "file made for this base model (gligen_sd14_textbox_pruned for SD1.4/1.5)")


def ground(conditioning, clip, gligen, boxes: list[tuple[str, Box]], width: int, height: int):
    """conditioning with every box's phrase and position in its 'gligen' entry (copies; inputs unchanged)."""
    params = []
    for phrase, box in boxes:
        _, pooled = clip.encode_from_tokens(clip.tokenize(phrase), return_pooled="unprojected")
        if pooled is None or pooled.shape[-1] != gligen.model.key_dim:
            got = None if pooled is None else pooled.shape[-1]
            raise ValueError(f"clip: its pooled output has width {got}, GLIGEN needs {gligen.model.key_dim}: "
                             "use the SD1.x checkpoint's own CLIP")
        params.append((pooled, *gligen_position(box, width, height)))
    out = []
    for cond, options in conditioning:
        options = options.copy()
        previous = options["gligen"][2] if "gligen" in options else []
        options["gligen"] = ("position", gligen, previous + params)
        out.append([cond, options])
    return out


def sample_prior(model, clip, vae, gligen, boxes, prompt: str, negative: str, seed: int, steps: int, cfg: float,
                 sampler_name: str, scheduler: str, width: int, height: int):
    import torch

    check_sd1_model(model)
    check_gligen_matches(model, gligen)
    positive = ground(clip.encode_from_tokens_scheduled(clip.tokenize(prompt)), clip, gligen, boxes, width, height)
    negative_cond = clip.encode_from_tokens_scheduled(clip.tokenize(negative))
    latent = {"samples": torch.zeros([1, 4, height // 8, width // 8])}
    out = sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative_cond, latent)
    return vae.decode(out["samples"]), out
