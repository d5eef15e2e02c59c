"""TEST ONLY: a real CLIP object from ComfyUI's own text-encoder classes, built on the meta device (so the full-size
encoder is never allocated) and filled with the tiny models' seeded values."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

SCRIPTS = Path(__file__).resolve().parents[4] / "scripts"  # rl_devkit: the tiny models' seeded init


def random_clip(tokenizer, text_encoder, options: dict[str, Any], before_fill: Callable | None = None):
    """ComfyUI's CLIP for (tokenizer, text_encoder) with its own per-encoder overrides in `options` (e.g.
    "<name>_model_config"), bf16; `before_fill(cond_stage_model)` may drop parts first."""
    import torch
    import comfy.sd
    import comfy.supported_models_base

    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    from rl_devkit.tiny_models import seeded

    target = comfy.supported_models_base.ClipTarget(tokenizer, text_encoder)
    options = {**options, "dtype": torch.bfloat16, "initial_device": torch.device("meta")}
    clip = comfy.sd.CLIP(target, model_options=options)
    if before_fill is not None:
        before_fill(clip.cond_stage_model)
    clip.cond_stage_model.to_empty(device=torch.device("cpu"))
    seeded(clip.cond_stage_model, seed=0)
    return clip
