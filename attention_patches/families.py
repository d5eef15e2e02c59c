"""What differs between the joint-attention model families regional prompting serves, in one declarative table.

The attention rule itself (regional_attention) is the same for every family; a family only says how its model is
called and how its joint sequence is laid out. Plain Python: nothing here imports ComfyUI (the nodes map ComfyUI's
model classes onto these entries).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    key: str
    name: str  # as users know it, for messages
    # positional arguments the DIFFUSION_MODEL wrapper receives before transformer_options (the model's forward)
    forward_args: tuple[str, ...]
    latent_channels: int  # of the latent the sampler hands the model (without concatenated channels)
    patch_size: int = 2  # latent pixels per token side
    text_first: bool = True  # joint sequence [text | image]; the regional texts go before the base text
    block_kinds: tuple[str, ...] = ("double", "single")  # block_type values, in the order the model runs them
    reference_tokens: bool = False  # `ref_latents` add image tokens after the grid (FLUX.1 Kontext)
    latent_hint: str = "EmptySD3LatentImage"
    text_encoder_hint: str = "DualCLIPLoader, type flux"
    # the model's attribute holding each kind's blocks (default `<kind>_blocks`)
    block_lists: tuple[str, ...] | None = None
    latent_dims: int = 2  # latent axes after batch and channels (Qwen-Image: time, height, width)
    # Text RoPE positions. "shared": every text token sits at the same position (FLUX: 0), so region texts placed
    # before the base text keep the positions they have alone. "sequential": text token j sits at txt_start + j
    # (Qwen-Image), so the wrapper re-bases each region text and the base text to start at txt_start
    # (text_positions.py, through ComfyUI's patches_replace["dit"] block patch point). "rotated": sequential without
    # that patch point (Z-Image): each region text is turned, after RoPE, to where that prompt alone (padded to
    # `pad_multiple`) sits before the image (text_positions.rotated_text_rows, in the attention override); the RoPE
    # facts come from the model's `rope_embedder` (theta, axis widths; the text axis first).
    # "none": the text has no positions at all (SD3), so its order does not matter.
    text_positions: str = "shared"
    # other hosts' forward signatures (positional arguments before transformer_options), told apart by the names
    # of the model's `forward` parameters
    other_forward_args: tuple[tuple[str, ...], ...] = ()
    # Regional LoRA: the token rows each Linear layer sees, as (stream, regular expression over the layer's path in
    # the diffusion model): "img" [image | reference tokens], "txt" the text tokens, "joint" [text | image |
    # reference]. Layers matched by none act per sample (modulations, embedders): no rows, so not regional.
    # Empty: no regional LoRA for this family yet.
    lora_streams: tuple[tuple[str, str], ...] = ()
    # The model left-pads a prompt to this many tokens (FLUX.2: Flux2.extra_conds pads with zeros to 512), so a
    # sequential prompt of n tokens alone sits at max(pad - n, 0) + j; region texts (real tokens only) are placed
    # there. 0: no padding.
    text_pad_left_to: int = 0
    vae_scale: int = 8  # picture pixels per latent pixel (feathers are given in picture pixels)
    # The model's forward takes transformer_options as a keyword only (Z-Image: forward(x, timesteps, context,
    # num_tokens, attention_mask=None, **kwargs)), not as the argument after `forward_args`.
    options_keyword: bool = False
    # The model pads the caption and the image tokens each to a multiple of this with learnt pad tokens (Z-Image:
    # 32). The caption's pads belong to the base text, the image's pads come after the grid (base attention only, as
    # reference tokens); the region texts are followed by zero filler up to a multiple, so that the base text keeps
    # its own pad count and its offsets to the image. The filler is no key anywhere (regional_attention). 0: none.
    pad_multiple: int = 0
    # The model's attribute holding blocks that refine the text alone (self-attention over the caption only) before
    # the joint blocks (Z-Image: context_refiner). There every region text and the base text attend to themselves
    # only, so each is refined as that prompt alone (without the learnt pad tokens a prompt alone gets: the model
    # adds them after the text embedder, where no patch point reaches). "": none.
    text_refiners: str = ""
    # ComfyUI wrapper point the regional wrapper goes on: "diffusion_model" (WrappersMP.DIFFUSION_MODEL, around the
    # model's forward) or "apply_model" (WrappersMP.APPLY_MODEL, around BaseModel.apply_model, for models whose
    # forward has no wrapper point: SD3's MMDiT); `forward_args` are then apply_model's arguments
    wraps: str = "diffusion_model"
    context_arg: str = "context"  # which of `forward_args` holds the prompt's text embeddings
    text_in: str = "txt_in"  # the model's Linear that takes the text embeddings (its in_features: their width)
    # How a joint attention call learns its block: "options" (the host puts block_type / block_index in
    # transformer_options) or "patch" (it does not on any host: the wrapper names every block through ComfyUI's
    # patches_replace["dit"][(kind + "_block", i)] patch point, which the model calls for each block)
    block_info: str = "options"
    # q, k, v of a joint attention call: "heads" ([B, H, L, D] with skip_reshape, FLUX's attention) or "flat"
    # ([B, L, H·D] with `heads`, SD3's _block_mixing)
    qkv_layout: str = "heads"
    # Attention calls that are not joint and stay plain: "" none; "image" those over the image tokens alone (SD3.5
    # Medium's x_block_self_attn, a second attention in the x_block of its first blocks, on the same
    # transformer_options)
    plain_calls: str = ""
    # Tokenizer sections of the family's CLIP object (the keys of clip.tokenize(text)), by which the encode node,
    # which sees only the CLIP, knows the family; () when the encoding needs nothing family-specific
    text_sections: tuple[str, ...] = ()
    # Which tokens a region text keeps: "real" (its real tokens, cut from the prompt's own padded encoding) or
    # "padded" (the whole conditioning of that prompt alone, padding included; see regional_cond.encode_texts)
    region_tokens: str = "real"

    def diffusion_model(self, wrapped):
        """The diffusion model inside the object the wrapper wraps (`executor.class_obj`)."""
        return getattr(wrapped, "diffusion_model", None) if self.wraps == "apply_model" else wrapped

    # The model's attribute holding blocks that run through the same attention before the text refiners, each over
    # one token alone (Krea 2: txtfusion.layerwise_blocks attend across the encoder's layers of one token; their
    # sequence is the layer count): no token sees another, so they run plain. "": none.
    text_layerwise: str = ""
    # The forward keyword naming how reference latents join (Krea 2: ref_latents_method, else the model's
    # default_ref_method); where it is None the model drops them (no tokens). "": they always join.
    reference_method: str = ""

    def block_attributes(self) -> tuple[str, ...]:
        return self.block_lists or tuple(f"{kind}_blocks" for kind in self.block_kinds)

    def blocks(self, model) -> tuple[int, ...] | None:
        """How many blocks of each kind `model` has (its block lists), or None if it is not at hand."""
        if model is None or not all(hasattr(model, name) for name in self.block_attributes()):
            return None
        return tuple(len(getattr(model, name)) for name in self.block_attributes())

    def submodule(self, model, path: str):
        """The module at the dotted attribute `path` of `model` ("txtfusion.refiner_blocks"), or None."""
        for name in path.split("."):
            model = getattr(model, name, None)
        return model

    def forward_names(self, model) -> tuple[str, ...]:
        """The forward arguments before transformer_options on this host: the entry whose names match the
        parameters of `model.forward`, else `forward_args`."""
        if not self.other_forward_args or model is None:
            return self.forward_args
        try:
            params = tuple(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            return self.forward_args
        for names in (self.forward_args, *self.other_forward_args):
            if params[: len(names)] == names:
                return names
        return self.forward_args


# FLUX.1 and Chroma (the same block names): double blocks with an image and a text stream, single blocks on the
# joint sequence; Ovis-Image's gated MLP names its layers gate_proj / up_proj / down_proj.
FLUX_LORA_STREAMS = (
    (
        "img",
        r"double_blocks\.\d+\.img_(attn\.(qkv|proj)|mlp\.(\d+|gate_proj|up_proj|down_proj))|img_in|final_layer\.linear",
    ),
    ("txt", r"double_blocks\.\d+\.txt_(attn\.(qkv|proj)|mlp\.(\d+|gate_proj|up_proj|down_proj))|txt_in"),
    ("joint", r"single_blocks\.\d+\.linear[12]"),
)
# Qwen-Image: double-stream blocks only, each stream with its own projections (image: to_q/to_k/to_v, to_out.0,
# img_mlp; text: add_q/k/v_proj, to_add_out, txt_mlp); proj_out sees [image | reference tokens].
QWEN_IMAGE_LORA_STREAMS = (
    (
        "img",
        r"transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0)|img_mlp\.net\.(0\.proj|2))|img_in|proj_out",
    ),
    ("txt", r"transformer_blocks\.\d+\.(attn\.(add_[qkv]_proj|to_add_out)|txt_mlp\.net\.(0\.proj|2))|txt_in"),
)

FLUX1 = ModelFamily(
    "flux1",
    "FLUX.1",
    ("x", "timestep", "context", "y", "guidance", "ref_latents", "control"),
    latent_channels=16,
    reference_tokens=True,
    lora_streams=FLUX_LORA_STREAMS,
)
CHROMA = ModelFamily(
    "chroma",
    "Chroma",
    ("x", "timestep", "context", "guidance", "control"),
    latent_channels=16,
    text_encoder_hint="CLIPLoader, type chroma (T5-XXL)",
    lora_streams=FLUX_LORA_STREAMS,
)

# LongCat-Image (and Ovis-Image), on newer hosts only: FLUX.1's Flux class fed by a Qwen2.5-VL (Ovis: Qwen3)
# encoder, no pooled vector, and text token j at RoPE position j on two axes (params.txt_ids_dims = [1, 2]; the image
# grid is shifted by the base prompt's length through rope_options), so the region texts are re-based like
# Qwen-Image's (text_positions.py).
LONGCAT_IMAGE = ModelFamily(
    "longcat_image",
    "LongCat-Image / Ovis-Image",
    FLUX1.forward_args,
    latent_channels=16,
    reference_tokens=True,
    text_positions="sequential",
    text_encoder_hint="CLIPLoader, type longcat_image (Qwen2.5-VL 7B) or ovis",
    lora_streams=FLUX_LORA_STREAMS,
)

# Qwen-Image (and -Edit): 60 double-stream blocks as `transformer_blocks` (block_type "double" and block_index are
# set on every supported host), joint sequence [text | image | reference latents (Edit)], text RoPE positions
# arange(txt_start, ...). v0.3.76 calls (x, timestep, context, attention_mask, guidance, ref_latents, options);
# newer hosts dropped guidance and added additional_t_cond after ref_latents.
QWEN_IMAGE = ModelFamily(
    "qwen_image",
    "Qwen-Image",
    ("x", "timestep", "context", "attention_mask", "guidance", "ref_latents"),
    latent_channels=16,
    block_kinds=("double",),
    block_lists=("transformer_blocks",),
    reference_tokens=True,
    latent_dims=3,
    text_positions="sequential",
    other_forward_args=(("x", "timestep", "context", "attention_mask", "ref_latents", "additional_t_cond"),),
    text_encoder_hint="CLIPLoader, type qwen_image (Qwen2.5-VL 7B)",
    lora_streams=QWEN_IMAGE_LORA_STREAMS,
)

# FLUX.2 (dev; klein on newer hosts): ComfyUI's Flux class with global modulation and four RoPE axes, patch size 1
# over a 128-channel latent at 1/16 of the picture, no pooled vector; forward as FLUX.1's (reference latents after
# the image). Text token j of the context sits at RoPE position j (axis 3, sequential), and Flux2.extra_conds
# left-pads every prompt with zeros to 512 tokens, so a prompt of n tokens alone sits at 512 - n + j: the region
# texts (their real tokens only) are placed there, the base text keeps its rows (text_positions.py).
FLUX2 = ModelFamily(
    "flux2",
    "FLUX.2",
    ("x", "timestep", "context", "y", "guidance", "ref_latents", "control"),
    latent_channels=128,
    patch_size=1,
    reference_tokens=True,
    latent_hint="EmptyFlux2LatentImage",
    text_encoder_hint="CLIPLoader, type flux2",
    text_positions="sequential",
    text_pad_left_to=512,
    vae_scale=16,
    lora_streams=FLUX_LORA_STREAMS,  # FLUX.1's layer names; the global modulations act per sample
)

# Z-Image (ComfyUI's Lumina2 NextDiT with z_image_modulation): single-stream `layers` over [caption | image], each
# padded to a multiple of 32 with a learnt pad token; before them `context_refiner` (caption only) and
# `noise_refiner` (image only) self-attentions run through the same attention function (told apart by sequence
# length and order: the caption refiners run first). Only `layers` are joint; v0.30 marks them block_type "double",
# v0.3.76 gives no block info (the calls are counted). Text RoPE positions are sequential (axis 0 at 1 + j, the
# image at the padded caption length + 1): the filler keeps the base text's offsets to the image those of the base
# prompt alone, and each region text is turned to the offsets that prompt alone (padded) has ("rotated").
ZIMAGE = ModelFamily(
    "zimage",
    "Z-Image",
    ("x", "timesteps", "context", "num_tokens", "attention_mask"),
    latent_channels=16,
    block_kinds=("double",),
    block_lists=("layers",),
    latent_hint="EmptySD3LatentImage",
    text_encoder_hint="CLIPLoader, type lumina2 (Qwen3 4B)",
    text_positions="rotated",
    options_keyword=True,
    pad_multiple=32,
    text_refiners="context_refiner",
)


# SD3 / SD3.5 (ComfyUI's OpenAISignatureMMDITWrapper): `joint_blocks`, each a JointBlock whose joint attention
# runs over [context | image] (_block_mixing), the last block's context stream pre_only (its attention output for
# the text is dropped). The text has no positional encoding (the image a learnt pos_embed, cropped to the size), so
# region texts need no positions. MMDiT's forward has no DIFFUSION_MODEL wrapper point and puts no block in
# transformer_options on any supported host, and its attention gets q, k, v as [B, L, H·D]. SD3.5 Medium's first
# blocks run a second, image-only attention in the x_block (x_block_self_attn), which stays plain. The conditioning
# is CLIP-L | CLIP-G (77-token chunks, padded, widened to 4096) followed by T5 (padded to 77): region texts keep
# the whole padded conditioning of their prompt (regional_cond.encode_texts says why).
SD3 = ModelFamily(
    "sd3",
    "SD3 / SD3.5",
    ("x", "t", "c_concat", "c_crossattn", "control"),
    latent_channels=16,
    block_kinds=("double",),
    block_lists=("joint_blocks",),
    text_encoder_hint="TripleCLIPLoader (clip_l, clip_g, t5xxl)",
    text_positions="none",
    wraps="apply_model",
    context_arg="c_crossattn",
    text_in="context_embedder",
    block_info="patch",
    qkv_layout="flat",
    plain_calls="image",
    text_sections=("g", "l", "t5xxl"),
    region_tokens="padded",
)


# Krea 2 (newer hosts only: ComfyUI's krea2 SingleStreamDiT): `blocks` of single-stream attention over
# [text | image] (block_type "single", block_index set), text RoPE positions all 0 ("shared"), image ids
# (0, h, w), 2x2 patches over the 16-channel Wan 2.1 latent ([B, 16, 1, H, W], like Qwen-Image's). The context is
# 12 Qwen3-VL layers side by side per token, fused into one text by `txtfusion` before the joint blocks: its
# layerwise_blocks attend across the 12 layers of each token alone (plain: no token sees another), a per-token
# projector and txtmlp, and its refiner_blocks attend across all text tokens. "That prompt alone" for the fusion:
# every region text and the base text is fused exactly as the model fuses that prompt as its whole context (the
# per-token steps are so already; in refiner_blocks each text attends to itself only), so the order of the region
# texts does not matter. Reference latents (editing) join after the image only with a ref_latents_method.
KREA2 = ModelFamily(
    "krea2",
    "Krea 2",
    ("x", "timesteps", "context", "attention_mask", "ref_latents"),
    latent_channels=16,
    block_kinds=("single",),
    block_lists=("blocks",),
    latent_dims=3,
    reference_tokens=True,
    reference_method="ref_latents_method",
    text_encoder_hint="CLIPLoader, type krea2 (Qwen3-VL 4B)",
    text_refiners="txtfusion.refiner_blocks",
    text_layerwise="txtfusion.layerwise_blocks",
)


FAMILIES = {family.key: family for family in (FLUX1, CHROMA, QWEN_IMAGE, FLUX2, LONGCAT_IMAGE, ZIMAGE, SD3, KREA2)}
