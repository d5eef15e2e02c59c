"""Regional prompting applied to a joint-attention model (FLUX.1, Chroma, Qwen-Image, FLUX.2, SD3: see families.py)
through ComfyUI's own patch points.

A DIFFUSION_MODEL wrapper (APPLY_MODEL for SD3, whose forward has none; added to a ModelPatcher clone) runs, on each model call of a regional step, the
positive rows with the region texts put before the base prompt (FLUX's text positions are all 0, so the order
only decides where each part lies; families with sequential text positions get each text's own positions back
through text_positions.py) and an `optimized_attention_override` in a
per-call copy of transformer_options; the negative rows (cond_or_uncond == 1) and the other steps run the plain
model. Any attention override already present is kept and called for the plain work.
This module touches only torch and the arguments ComfyUI hands it; it never imports ComfyUI.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from .families import FAMILIES, FLUX1, ModelFamily
from .regional_attention import SequencePlan, regional_attention, separate_text_attention, unselected_block_attention
from .regional_cond import RegionalConditioning
from .text_positions import own_text_position_rows, padded_text_shifts, rotated_text_rows, with_own_text_positions
from .token_masks import region_token_masks

PATCH_KEY = "regional_layout.regional_flux"
WRAPPER_POINTS = tuple(sorted({family.wraps for family in FAMILIES.values()}))
# transformer_options key of a regional call's SequencePlan, for wrappers that run inside (Regional LoRA)
PLAN_OPTION = "regional_layout.plan"
# Raised when a sampling call ran FLUX without one call of our attention override: something below us took it out.
NO_OVERRIDE_CALLS = (
    "Regional FLUX: FLUX's attention never reached the regional override. Either a patch replaces FLUX's forward "
    "(TeaCache, MagCache, Nunchaku models), which cannot be combined with regional prompting: remove it; or an "
    "attention patch node (e.g. Sage/Flash attention) placed after Regional FLUX Patch replaces its attention "
    "override instead of chaining it: connect that node before Regional FLUX Patch "
    "(loader -> attention patch -> Regional FLUX Patch -> sampler)"
)


@dataclass(frozen=True)
class RegionalFluxOptions:
    beta: float = 0.2  # share of plain (base prompt) attention in the image rows
    control_steps: int = 10  # the first N sampling steps are regional
    double_blocks: frozenset[int] = frozenset()
    single_blocks: frozenset[int] = frozenset()
    feather: float = 0.0  # pixels; added softness at every region's edge
    # True: the exact dense-mask path for every layout. False (default): hard, disjoint masks take the grouped
    # path (one small attention per region + the plain one), soft or overlapping masks the dense path.
    force_dense: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"base_ratio must be in [0, 1], got {self.beta}")
        if self.control_steps < 0:
            raise ValueError(f"control_steps must be >= 0, got {self.control_steps}")

    @property
    def changes_anything(self) -> bool:
        return self.beta < 1.0 and self.control_steps > 0 and bool(self.double_blocks or self.single_blocks)


def parse_blocks(text: str, count: int, name: str = "blocks") -> frozenset[int]:
    """ "all", "none" (or empty), "every N" (0, N, 2N, ...), or a list of indices and ranges like "0-7,12"."""
    spec = text.strip().lower()
    if spec in ("all", "*"):
        return frozenset(range(count))
    if spec in ("", "none"):
        return frozenset()
    every = re.fullmatch(r"every\s+(\d+)(?:\s+from\s+(\d+))?", spec)
    if every:
        step, start = int(every.group(1)), int(every.group(2) or 0)
        if step < 1:
            raise ValueError(f"{name}: 'every {step}' needs a step of at least 1")
        return frozenset(range(start, count, step))
    chosen: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(
                f"{name}: cannot read {part!r} in {text!r}; use 'all', 'none', 'every 2' or a list like '0-7,12'"
            )
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo or hi >= count:
            raise ValueError(f"{name}: {part!r} is outside the model's blocks 0-{count - 1}")
        chosen.update(range(lo, hi + 1))
    return frozenset(chosen)


def step_is_controlled(transformer_options: dict, control_steps: int) -> bool:
    """True while the current sigma is above the schedule's sigma at step `control_steps`. Sub-steps strictly
    between two schedule sigmas count with their step; one that lands exactly on the next schedule sigma (Heun's
    corrector, the ancestral 2S midpoint at eta 1) counts with the next step, so in the last control step it runs
    plain (README: control_steps). Without a schedule, every call is regional."""
    if control_steps <= 0:
        return False
    schedule, sigmas = transformer_options.get("sample_sigmas"), transformer_options.get("sigmas")
    if schedule is None or sigmas is None or control_steps >= len(schedule) - 1:
        return True
    boundary = float(schedule[control_steps])
    return float(sigmas.max()) > boundary + 1e-5 * max(1.0, abs(boundary))


def _is_first_step(transformer_options: dict) -> bool:
    """True at the sampler's first sigma (or without a schedule): no step cache skips the model there."""
    schedule, sigmas = transformer_options.get("sample_sigmas"), transformer_options.get("sigmas")
    if schedule is None or sigmas is None:
        return True
    first = float(schedule[0])
    return float(sigmas.max()) >= first - 1e-5 * max(1.0, abs(first))


def _take(value, rows: Tensor, batch: int):
    """The batch rows `rows` of every tensor in `value` whose first dimension is the batch."""
    if torch.is_tensor(value):
        return value[rows.to(value.device)] if value.ndim and value.shape[0] == batch else value
    if isinstance(value, (list, tuple)):
        return type(value)(_take(v, rows, batch) for v in value)
    if isinstance(value, dict):
        return {k: _take(v, rows, batch) for k, v in value.items()}
    return value


class RegionalFluxWrapper:
    """The DIFFUSION_MODEL wrapper of a FLUX-like model (`family`). Holds only its inputs and caches derived from
    them (token plans)."""

    def __init__(self, cond: RegionalConditioning, options: RegionalFluxOptions, family: ModelFamily = FLUX1):
        self.cond = cond
        self.options = options
        self.family = family
        self._plans: dict[tuple, SequencePlan] = {}

    def to(self, *args, **kwargs) -> "RegionalFluxWrapper":
        return self  # tensors are moved per call (they are small)

    # -----------------------------------------------------------------------------------------------------
    def __call__(self, executor, *call_args, **kwargs):
        names = self.family.forward_names(self.family.diffusion_model(getattr(executor, "class_obj", None)))
        n = len(names)
        args, transformer_options = (
            call_args[:n],
            call_args[n] if len(call_args) > n else kwargs.pop("transformer_options", {}),
        )
        named = dict(zip(names, args))
        x, context = named["x"], named[self.family.context_arg]
        if not self.options.changes_anything or not step_is_controlled(transformer_options, self.options.control_steps):
            return self._run(executor, args, transformer_options, kwargs)
        self._check(x, context, self.family.diffusion_model(getattr(executor, "class_obj", None)))
        batch = x.shape[0]
        chunks = list(transformer_options.get("cond_or_uncond") or [0])
        if batch % len(chunks):
            chunks = [0]
        size = batch // len(chunks)
        positive = [i for i, c in enumerate(chunks) if c == 0]
        if not positive:
            return self._run(executor, args, transformer_options, kwargs)
        if len(positive) == len(chunks):
            return self._regional(executor, args, transformer_options, kwargs)
        out = None
        for wanted in (positive, [i for i in range(len(chunks)) if i not in positive]):
            rows = torch.cat([torch.arange(i * size, (i + 1) * size) for i in wanted])
            opts = dict(transformer_options)
            opts["cond_or_uncond"] = [chunks[i] for i in wanted]
            if isinstance(transformer_options.get("uuids"), list) and len(transformer_options["uuids"]) == len(chunks):
                opts["uuids"] = [transformer_options["uuids"][i] for i in wanted]
            sub_args, sub_kwargs = _take(args, rows, batch), _take(kwargs, rows, batch)
            if wanted is positive:
                part = self._regional(executor, sub_args, opts, sub_kwargs)
            else:
                part = self._run(executor, sub_args, opts, sub_kwargs)
            if out is None:
                out = part.new_empty((batch, *part.shape[1:]))
            out[rows.to(part.device)] = part
        return out

    def _run(self, executor, args, transformer_options: dict, kwargs: dict):
        """The next wrapper or the model's forward, with transformer_options where this family's forward takes it."""
        if self.family.options_keyword:
            return executor(*args, transformer_options=transformer_options, **kwargs)
        return executor(*args, transformer_options, **kwargs)

    def _check(self, x: Tensor, context: Tensor, model=None) -> None:
        family = self.family
        img_in = getattr(getattr(model, "img_in", None), "weight", None)
        per_token = family.patch_size**2
        channels = img_in.shape[1] // per_token if img_in is not None else family.latent_channels  # Fill/Canny
        frames = x.shape[2] if family.latent_dims == 3 and x.ndim == 5 else 1  # Qwen-Image: [B, C, 1, H, W]
        if x.ndim != 2 + family.latent_dims or x.shape[1] != channels or frames != 1:  # concat channels
            one_frame = " one-frame" if family.latent_dims == 3 else ""
            needs = f"a {family.latent_channels}-channel{one_frame} latent (use {family.latent_hint} or encode with the {family.name} VAE)"
            if channels != family.latent_channels:  # Fill / Canny / Depth: the rest comes from the conditioning
                needs = (
                    f"{channels} input channels: {needs} and {channels - family.latent_channels} channels its "
                    "conditioning concatenates (FLUX.1 Fill: InpaintModelConditioning; Canny/Depth: "
                    "InstructPixToPixConditioning)"
                )
            raise ValueError(
                f"Regional FLUX: the latent has shape {tuple(x.shape)}; this {family.name} model needs {needs}"
            )
        if context.shape[-1] != self.cond.width:
            raise ValueError(
                f"Regional FLUX: regional_cond is {self.cond.width} wide but the prompt is "
                f"{context.shape[-1]}: encode both with the same {family.name} text encoder "
                f"({family.text_encoder_hint})"
            )

    def _regional(self, executor, args, transformer_options: dict, kwargs: dict):
        model = self.family.diffusion_model(getattr(executor, "class_obj", None))
        named = dict(zip(self.family.forward_names(model), args))
        x, context = named["x"], named[self.family.context_arg]
        if "attention_mask" in named:  # [B, T0]: it has no region text columns
            named["attention_mask"] = _no_padding(named["attention_mask"])
        refs = named.get("ref_latents") if self.family.reference_tokens else None
        if (
            self.family.reference_method
            and kwargs.get(self.family.reference_method, getattr(model, "default_ref_method", None)) is None
        ):
            refs = None  # Krea 2 drops reference latents without a method
        extra = _extra_tokens(refs, self.family.patch_size)
        plan = self.plan(x.shape[-2], x.shape[-1], context.shape[1], extra)
        texts = self.region_texts(plan).to(context.device, context.dtype)
        filler = texts.new_zeros(1, plan.filler, texts.shape[-1])  # the model pads the base text after it
        named[self.family.context_arg] = torch.cat(
            [torch.cat([texts, filler], 1).expand(context.shape[0], -1, -1), context], dim=1
        )
        opts = dict(transformer_options)
        blocks = self.family.blocks(model)
        if self.family.block_info == "patch":
            if blocks is None:
                raise ValueError(f"Regional FLUX: cannot find the {self.family.name} model's blocks")
            opts["patches_replace"] = with_block_names(opts.get("patches_replace"), self.family.block_kinds, blocks)
        if self.family.text_positions == "sequential":
            if blocks is None:
                raise ValueError(f"Regional FLUX: cannot find the {self.family.name} model's blocks")
            rows = own_text_position_rows(plan.text_lens, plan.base_len, plan.length, self.family.text_pad_left_to)
            opts["patches_replace"] = with_own_text_positions(
                opts.get("patches_replace"), rows, self.family.block_kinds, blocks
            )
        turn = None
        if self.family.text_positions == "rotated":
            rope = getattr(model, "rope_embedder", None)
            if rope is None:
                raise ValueError(f"Regional FLUX: cannot find the {self.family.name} model's rope_embedder")
            shifts = padded_text_shifts(plan.text_lens, plan.img_start, plan.length, self.family.pad_multiple)
            turn = (shifts, int(rope.axes_dim[0]), float(rope.theta))
        text_blocks = {}
        for path in (self.family.text_refiners, self.family.text_layerwise):
            text_blocks[path] = self.family.submodule(model, path) if path else None
            if path and text_blocks[path] is None:
                raise ValueError(f"Regional FLUX: cannot find the {self.family.name} model's {path}")
        refiners, layerwise = text_blocks[self.family.text_refiners], text_blocks[self.family.text_layerwise]
        override = regional_override(
            plan,
            self.options,
            transformer_options.get("optimized_attention_override"),
            [],
            blocks[0] if blocks else None,
            text_refiners=len(refiners) if refiners is not None else 0,
            turn=turn,
            family=self.family,
            per_token=len(layerwise) if layerwise is not None else 0,
        )
        opts["optimized_attention_override"] = override
        opts[PLAN_OPTION] = plan
        out = self._run(executor, tuple(named[name] for name in self.family.forward_names(model)), opts, kwargs)
        # e.g. a patch that replaces FLUX's forward without passing transformer_options on. Checked on the first
        # step only: later a step cache below us (EasyCache placed after the patcher) may skip FLUX altogether.
        if not override.calls:
            if _is_first_step(transformer_options):
                raise ValueError(NO_OVERRIDE_CALLS)
            return out
        if override.counted and (blocks is None or len(override.calls) != sum(blocks)):
            raise ValueError(
                f"Regional FLUX: this ComfyUI does not tell the attention which block runs, and the "
                f"{len(override.calls)} attention calls do not match the model's blocks {blocks}, so "
                "blocks cannot be told apart (another patch skips or repeats blocks); update ComfyUI "
                "to 0.3.76 or newer"
            )
        return out

    def plan(self, latent_h: int, latent_w: int, base_len: int, n_extra: int = 0) -> SequencePlan:
        """The joint sequence of a call whose base prompt has `base_len` tokens (as the model receives it) and
        `n_extra` reference tokens."""
        key = (latent_h, latent_w, base_len, n_extra)
        if key not in self._plans:
            masks = region_token_masks(
                self.cond.masks(),
                latent_h,
                latent_w,
                background=self.cond.background is not None,
                feathers=[max(f, self.options.feather) for f in self.cond.feathers()],
                patch_size=self.family.patch_size,
                vae_scale=self.family.vae_scale,
            )
            lens = tuple(e.shape[1] for e in self.region_embeds(masks.hard.shape[0]))
            multiple, filler = self.family.pad_multiple, 0
            if multiple:  # the model pads the caption (base text last) and the image tokens: see families.py
                filler = -sum(lens) % multiple
                base_len += -base_len % multiple
                n_extra += -masks.hard.shape[1] % multiple
            self._plans[key] = SequencePlan(base_len, lens, masks, n_extra, self.options.force_dense, filler=filler)
        return self._plans[key]

    def region_embeds(self, rows: int) -> list[Tensor]:
        """The embeddings of the plan's region rows: every region, then the background if it holds tokens."""
        embeds = list(self.cond.embeds)
        return embeds + [self.cond.background] if rows > len(embeds) else embeds

    def region_texts(self, plan: SequencePlan) -> Tensor:
        return torch.cat(self.region_embeds(len(plan.text_lens)), dim=1)


def _extra_tokens(ref_latents, patch_size: int = 2) -> int:
    if not ref_latents:
        return 0
    return sum(
        (r.shape[-3] if r.ndim == 5 else 1) * math.ceil(r.shape[-2] / patch_size) * math.ceil(r.shape[-1] / patch_size)
        for r in ref_latents
    )


def _no_padding(mask):
    """A text attention mask (Qwen-Image on newer hosts) that masks nothing is dropped; one that pads the prompt
    cannot combine with regional prompting yet."""
    if mask is None:
        return None
    keeps = (mask == 0) if torch.is_floating_point(mask) else (mask != 0)  # float: additive bias; else 1 = keep
    if bool(keeps.all()):
        return None
    raise ValueError(
        "Regional FLUX: the prompt carries a text padding mask (prompts of different lengths batched "
        "together); regional prompting cannot combine with it yet: encode one prompt per conditioning"
    )


def block_of_call(opts: dict, calls_so_far: int, n_double: int | None) -> tuple[str, int, bool]:
    """(block kind, block index, counted) of a joint attention call. ComfyUI 0.3.76+ puts the block in
    transformer_options; older hosts do not, and then FLUX's order (every double block, then every single block,
    one joint attention each) gives it from the number of calls so far in this model call."""
    kind, index = opts.get("block_type"), opts.get("block_index")
    if kind in ("double", "single") and isinstance(index, int):
        return kind, index, False
    if n_double is None:
        raise ValueError(
            "Regional FLUX: this ComfyUI does not tell the attention which block runs; update ComfyUI "
            "to 0.3.76 or newer"
        )
    if calls_so_far < n_double:
        return "double", calls_so_far, True
    return "single", calls_so_far - n_double, True


def regional_override(
    plan: SequencePlan,
    options: RegionalFluxOptions,
    previous=None,
    calls: list | None = None,
    n_double: int | None = None,
    *,
    text_refiners: int = 0,
    turn: tuple | None = None,
    family: ModelFamily = FLUX1,
    per_token: int = 0,
):
    """An `optimized_attention_override` for one model call: regional attention in the selected blocks, the
    unmasked regional stream (official rule) in the others; plain work goes through `previous`, or the back end
    ComfyUI chose. `override.calls` lists (block_type, block_index) of every joint attention call;
    `override.counted` says the blocks were counted (the host gave no block info); `override.plain` counts the
    calls the family declares not joint (`plain_calls`), which ran plain.

    `text_refiners` (Z-Image): the model first runs that many self-attentions over the text alone, then others over
    the image alone, through the same function: those shorter than the joint sequence are not joint; the text
    ones keep every text to itself (separate_text_attention), the image ones run plain. `turn` (shifts, axis width,
    theta): the region texts' q and k are moved to their own positions in every joint call (rotated_text_rows).
    `per_token` (Krea 2): before the text refiners, that many attentions over each token alone (across the text
    encoder's layers) run plain."""
    calls = [] if calls is None else calls
    refined, prelude = [], []

    def plain_call(func, q, k, v, heads, **kwargs):
        if previous is not None:
            return previous(func, q, k, v, heads, **kwargs)
        return func(q, k, v, heads, **kwargs)

    def override(func, q, k, v, heads, mask=None, **kwargs):
        opts = kwargs.get("transformer_options") or {}
        flat = family.qkv_layout == "flat" and q.ndim == 3 and not kwargs.get("skip_reshape")
        if flat and family.plain_calls == "image" and q.shape[1] == plan.n_img:  # not joint: image tokens alone
            override.plain += 1
            return plain_call(func, q, k, v, heads, mask=mask, **kwargs)
        if flat:  # [B, L, H·D] (SD3's v: [B, L, H, D]) -> [B, H, L, D]; the result is [B, L, H·D] as the call's
            q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
            kwargs = {**kwargs, "skip_reshape": True}
        if not kwargs.get("skip_reshape") or kwargs.get("skip_output_reshape") or q.ndim != 4:
            return plain_call(func, q, k, v, heads, mask=mask, **kwargs)
        if len(prelude) < per_token and not refined and not calls:  # one token's layers: no token sees another
            prelude.append(q.shape[2])
            return plain_call(func, q, k, v, heads, mask=mask, **kwargs)
        if text_refiners and q.shape[2] < plan.length and not calls:  # a refiner, before the joint blocks
            if len(refined) >= text_refiners:
                return plain_call(func, q, k, v, heads, mask=mask, **kwargs)  # the image's
            refined.append(q.shape[2])
            if q.shape[2] != plan.img_start or mask is not None:
                raise ValueError(
                    f"Regional FLUX: the text refiner sees {q.shape[2]} tokens, expected {plan.img_start} and no "
                    "mask; another patch changes the model's tokens"
                )
            return separate_text_attention(
                q, k, v, plan, lambda q_, k_, v_: plain_call(func, q_, k_, v_, heads, mask=None, **kwargs)
            )
        if q.shape[2] != plan.length:
            raise ValueError(
                f"Regional FLUX: the joint sequence has {q.shape[2]} tokens, expected {plan.length}; "
                "another patch changes FLUX's tokens, which regional prompting cannot combine with"
            )
        if mask is not None:
            raise ValueError(
                "Regional FLUX: the conditioning carries an attention mask; regional prompting "
                "cannot combine with it (remove the masked conditioning)"
            )
        if turn is not None:
            q, k = rotated_text_rows(q, k, *turn)
        kind, index, counted = block_of_call(opts, len(calls), n_double)
        override.counted = override.counted or counted
        calls.append((kind, index))
        selected = options.double_blocks if kind == "double" else options.single_blocks
        if index in selected:
            return regional_attention(q, k, v, plan, options.beta)
        return unselected_block_attention(
            q, k, v, plan, options.beta, lambda q_, k_, v_: plain_call(func, q_, k_, v_, heads, mask=None, **kwargs)
        )

    override.calls = calls
    override.counted = False
    override.plain = 0
    return override


def with_block_names(patches_replace: dict | None, block_kinds: tuple[str, ...], block_counts: tuple[int, ...]):
    """A copy of transformer_options["patches_replace"] whose "dit" block entries put block_type and block_index in
    the block's transformer_options (what newer FLUX hosts do themselves), then call the replacement that was
    there, or the block itself: for models that name no block to their attention (families.py `block_info`)."""
    patches = dict(patches_replace or {})
    dit = dict(patches.get("dit", {}))

    def patch_for(kind, index, previous):
        def patch(args, extra):
            opts = {**args.get("transformer_options", {}), "block_type": kind, "block_index": index}
            args = {**args, "transformer_options": opts}
            return previous(args, extra) if previous is not None else extra["original_block"](args)

        return patch

    for kind, count in zip(block_kinds, block_counts):
        for i in range(count):
            key = (f"{kind}_block", i)
            dit[key] = patch_for(kind, i, dit.get(key))
    patches["dit"] = dit
    return patches


def apply_regional_flux(model, cond: RegionalConditioning, options: RegionalFluxOptions, family: ModelFamily = FLUX1):
    """A clone of the ModelPatcher `model` (a `family` model) with the regional wrapper; `model` is not changed."""
    patched = model.clone()
    for point in WRAPPER_POINTS:  # a second patcher node replaces the first
        patched.remove_wrappers_with_key(point, PATCH_KEY)
    if options.changes_anything:
        patched.add_wrapper_with_key(family.wraps, PATCH_KEY, RegionalFluxWrapper(cond, options, family))
    else:
        logging.info("Regional FLUX: base_ratio 1, no control steps or no blocks selected: the model is unchanged")
    return patched
