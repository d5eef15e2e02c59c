"""Per-region LoRA inside the one regional pass: a Linear layer's low-rank update `s·B(A·x)` is added only to the
rows (tokens) of its region, scaled per row.

Which rows a Linear sees depends on its stream (each family's `lora_streams` in families.py names its layers):
  img   the image stream (FLUX.1 / Chroma: double blocks' img_attn.* / img_mlp.*, img_in, final_layer.linear;
        Qwen-Image: attn.to_q/k/v, attn.to_out.0, img_mlp.*, img_in, proj_out): [image tokens | extra reference
        tokens]
  txt   the text stream (FLUX.1 / Chroma: txt_attn.* / txt_mlp.*, txt_in; Qwen-Image: attn.add_q/k/v_proj,
        attn.to_add_out, txt_mlp.*, txt_in): the text tokens ([region texts | base text] in a regional call, the
        base text alone in a plain one)
  joint FLUX.1 / Chroma single blocks' linear1 / linear2: [text | image | extra]
Per-sample layers (modulations, time / vector / guidance embedders, Chroma's distilled guidance layer) see no
tokens, so they cannot be regional: their updates are left out (the node says so in the log).

A row's weight: the region's soft mask weight for its image tokens, 1 for its own prompt tokens, 0 for the base
prompt, the other regions, the background, reference tokens and every negative (uncond) batch row.
`RegionalLoraState` holds those weights for the model call in progress (set by `RegionalLoraWrapper`, the
DIFFUSION_MODEL wrapper that runs inside the regional one); `regional_linear` makes the patched copy of a Linear
that reads them. Plain torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .families import FLUX1, ModelFamily
from .flux_patch import PLAN_OPTION, RegionalFluxWrapper, _extra_tokens


@functools.lru_cache(maxsize=None)
def _compiled(streams: tuple[tuple[str, str], ...]) -> tuple[tuple[str, re.Pattern], ...]:
    return tuple((name, re.compile(pattern)) for name, pattern in streams)


def stream_of(layer: str, family: ModelFamily = FLUX1) -> str | None:
    """The stream of `family`'s Linear `layer` (path without "diffusion_model."), or None when its input has no
    token rows (per-sample layers) or the layer is unknown."""
    for name, pattern in _compiled(family.lora_streams):
        if pattern.fullmatch(layer):
            return name
    return None


class LowRankUpdate:
    """`scale · up @ (down @ x)` for one region, on the output columns `out_slice` (a LoRA mapped onto part of a
    fused layer, e.g. diffusers' to_q onto FLUX's qkv) or all of them."""

    def __init__(
        self,
        region: int,
        down: Tensor,
        up: Tensor,
        scale: float,
        out_slice: tuple[int, int] | None = None,
        in_slice: tuple[int, int] | None = None,
        source: str = "",
    ):
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"{source}: not a low-rank pair (up {tuple(up.shape)}, down {tuple(down.shape)})")
        self.region, self.down, self.up, self.scale = region, down, up, float(scale)
        self.out_slice, self.in_slice, self.source = out_slice, in_slice, source
        self._cast: dict = {}

    @property
    def nbytes(self) -> int:
        return self.down.numel() * self.down.element_size() + self.up.numel() * self.up.element_size()

    def factors(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """down [r, in] and up transposed [r, out] on `device` in `dtype` (cast once, kept)."""
        key = (device, dtype)
        if key not in self._cast:
            self._cast = {key: (self.down.to(device, dtype), self.up.t().to(device, dtype))}  # one device at a time
        return self._cast[key]

    def fits(self, in_features: int, out_features: int) -> bool:
        n_in = self.in_slice[1] if self.in_slice else in_features
        n_out = self.out_slice[1] if self.out_slice else out_features
        in_ok = self.in_slice is None or sum(self.in_slice) <= in_features
        out_ok = self.out_slice is None or sum(self.out_slice) <= out_features
        return in_ok and out_ok and self.down.shape[1] == n_in and self.up.shape[0] == n_out


@dataclass(eq=False)
class RowLayout:
    """The rows of one model call: per batch row whether it is positive, the text rows, and per region the weights
    of its image rows ([R, n_img]) and the span of its own prompt among the text rows (None in a plain call)."""

    positive: Tensor  # [B] bool
    n_txt: int
    image_weights: Tensor  # [R, n_img] float
    n_extra: int = 0
    text_spans: list[tuple[int, int]] | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def weights(self, region: int, stream: str, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """[B, rows] weights of `region` for a Linear of `stream`, or None when every row's weight is 0."""
        key = (region, stream, device, dtype)
        if key not in self._cache:
            self._cache[key] = self._weights(region, stream, device, dtype)
        return self._cache[key]

    def _weights(self, region: int, stream: str, device, dtype) -> Tensor | None:
        if not bool(self.positive.any()):
            return None
        parts = []
        if stream in ("txt", "joint"):
            txt = torch.zeros(self.n_txt)
            if self.text_spans is not None and region < len(self.text_spans):
                start, n = self.text_spans[region]
                txt[start : start + n] = 1.0
            parts.append(txt)
        if stream in ("img", "joint"):
            parts += [self.image_weights[region].float().cpu(), torch.zeros(self.n_extra)]
        row = torch.cat(parts)
        if not bool(row.any()):
            return None
        return (self.positive.float()[:, None] * row[None]).to(device, dtype)


class RegionalLoraState:
    """The row layout of the model call in progress, shared by the wrapper that sets it and the Linears that read
    it. No layout (outside a wrapped call): the Linears add nothing."""

    def __init__(self):
        self.layout: RowLayout | None = None


def _add_updates(members: list[tuple[LowRankUpdate, Tensor]], x: Tensor, out: Tensor) -> Tensor:
    """Adds every (update, row weights) of `members` (all on the same input and output slices) to `out`: their
    factors stacked along the rank, so the whole group costs one rank-sized matmul on the input and one in-place
    pass over the output."""
    first = members[0][0]
    factors = [u.factors(out.device, out.dtype) for u, _ in members]
    down = torch.cat([d for d, _ in factors]) if len(factors) > 1 else factors[0][0]
    up_t = torch.cat([u for _, u in factors]) if len(factors) > 1 else factors[0][1]
    scale = torch.cat([(w * u.scale)[..., None].expand(*w.shape, u.down.shape[0]) for u, w in members], dim=-1)
    xin = x if first.in_slice is None else x[..., first.in_slice[0] : first.in_slice[0] + first.in_slice[1]]
    h = torch.nn.functional.linear(xin.to(out.dtype), down) * scale  # [B, L, Σr]: rank-sized, cheap
    flat = out.view(-1, out.shape[-1]) if out.is_contiguous() else None
    if flat is None:
        delta = h @ up_t
        if first.out_slice is None:
            return out + delta
        start, n = first.out_slice
        return torch.cat([out[..., :start], out[..., start : start + n] + delta, out[..., start + n :]], dim=-1)
    if first.out_slice is not None:
        flat = flat[:, first.out_slice[0] : first.out_slice[0] + first.out_slice[1]]
    flat.addmm_(h.reshape(-1, h.shape[-1]), up_t)  # in place: no output-sized temporary
    return out


class RegionalLoraLinear:
    """Mixed into the class of a Linear (its own class stays a base, so ComfyUI's casting, weight patches and
    low-VRAM handling see the Linear they know): after the layer's output, each update's rows are added."""

    regional_lora_updates: tuple[LowRankUpdate, ...] = ()
    regional_lora_stream: str = ""
    regional_lora_state: RegionalLoraState | None = None

    def forward(self, x, *args, **kwargs):
        out = super().forward(x, *args, **kwargs)
        layout = self.regional_lora_state.layout if self.regional_lora_state is not None else None
        if layout is None or x.ndim != 3:
            return out
        groups: dict[tuple, list] = {}  # updates on the same slices run as one stacked update
        for update in self.regional_lora_updates:
            w = layout.weights(update.region, self.regional_lora_stream, out.device, out.dtype)
            if w is None:
                continue
            if w.shape != x.shape[:2]:
                raise ValueError(
                    f"Regional LoRA: a {self.regional_lora_stream} layer sees {x.shape[1]} tokens, the "
                    f"layout expects {w.shape[1]}; put Regional LoRA after Regional FLUX Patch (and no "
                    "patch that changes FLUX's tokens in between)"
                )
            groups.setdefault((update.in_slice, update.out_slice), []).append((update, w))
        for members in groups.values():
            out = _add_updates(members, x, out)
        return out


def regional_linear(
    base: nn.Module, updates: tuple[LowRankUpdate, ...], stream: str, state: RegionalLoraState
) -> nn.Module:
    """The Linear `base` seen through a class that adds `updates` per row: a new object that shares `base`'s
    attribute dictionary (parameters, buffers, hooks and whatever ComfyUI's loader marks on a module), so
    whatever ComfyUI does to it while it stands in the model (weight patches, low-VRAM casts, the flags that
    record them, and undoing all that) is what the same steps would do to `base`: the two never disagree.
    The updates live on the per-copy class; nothing is written to `base`."""
    original = type(base)
    while issubclass(original, RegionalLoraLinear):  # a copy of a copy: mix into the Linear class itself
        original = original.__mro__[2]
    cls = type(
        f"RegionalLora{original.__name__}",
        (RegionalLoraLinear, original),
        {"regional_lora_updates": tuple(updates), "regional_lora_stream": stream, "regional_lora_state": state},
    )
    copy = object.__new__(cls)
    copy.__dict__ = base.__dict__
    return copy


def plain_linear_updates(module: nn.Module) -> tuple[LowRankUpdate, ...]:
    return tuple(getattr(module, "regional_lora_updates", ()))


# ---------------------------------------------------------------------------------------------------------
# The wrapper that tells the Linears the rows of each model call


class RegionalLoraWrapper:
    """DIFFUSION_MODEL wrapper, run inside the regional wrapper (`regional`): for each model call it sets the row
    layout the patched Linears read, then runs the call. In a regional call (the regional wrapper put its plan in
    transformer_options) the text rows are [region texts | base]; in a plain call (steps after control_steps,
    the negative rows' own call) only the base text, which takes no update."""

    def __init__(self, regional: RegionalFluxWrapper, state: RegionalLoraState, family: ModelFamily = FLUX1):
        self.regional, self.state, self.family = regional, state, family

    def to(self, *args, **kwargs) -> "RegionalLoraWrapper":
        return self

    def __call__(self, executor, *call_args, **kwargs):
        names = self.family.forward_names(getattr(executor, "class_obj", None))
        n = len(names)
        opts = call_args[n] if len(call_args) > n else kwargs.get("transformer_options", {})
        named = dict(zip(names, call_args[:n]))
        self.state.layout = self.layout(named, opts)
        try:
            return executor(*call_args, **kwargs)
        finally:
            self.state.layout = None

    def layout(self, named: dict, opts: dict) -> RowLayout:
        x, context = named["x"], named["context"]
        batch = x.shape[0]
        chunks = list(opts.get("cond_or_uncond") or [0])
        if batch % len(chunks):
            chunks = [0] * batch
        positive = torch.tensor([c == 0 for c in chunks]).repeat_interleave(batch // len(chunks))
        extra = _extra_tokens(named.get("ref_latents")) if self.family.reference_tokens else 0
        plan = opts.get(PLAN_OPTION)
        if plan is not None:
            return RowLayout(positive, plan.img_start, plan.masks.weights, plan.n_extra, plan.text_spans())
        plan = self.regional.plan(x.shape[-2], x.shape[-1], context.shape[1], extra)
        return RowLayout(positive, context.shape[1], plan.masks.weights, extra)
