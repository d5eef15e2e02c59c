"""What every family's model-level test shares: the transformer_options a sampling step hands the diffusion model,
the patch's wrapper with every block chosen, and the checks that read the same for every family (the untouched
model, which latent pixels a region's tokens cover, a region's prompt swapped)."""

from __future__ import annotations

from typing import Callable

import torch

SAMPLE_SIGMAS = (1.0, 0.7, 0.4, 0.1, 0.0)  # a 4-step schedule: sigma 0.7 is the second step


def step_options(wrapper=None, cond_or_uncond=(0,), override=None, patches_replace=None, sigma=0.7, **extra) -> dict:
    """transformer_options as a sampling step at `sigma` hands them to the model: the regional wrapper in ComfyUI's
    DIFFUSION_MODEL wrapper chain, an attention override, block replacements, and `extra` keys."""
    from regional_layout.attention_patches.flux_patch import PATCH_KEY

    opts = {
        "cond_or_uncond": list(cond_or_uncond),
        "sigmas": torch.tensor([sigma]),
        "sample_sigmas": torch.tensor(SAMPLE_SIGMAS),
        **extra,
    }
    if wrapper is not None:
        opts["wrappers"] = {"diffusion_model": {PATCH_KEY: [wrapper]}}
    if override is not None:
        opts["optimized_attention_override"] = override
    if patches_replace is not None:
        opts["patches_replace"] = patches_replace
    return opts


def regional_wrapper(cond, family, depth: int, **options):
    """The patch's wrapper for `family`: beta 0, two control steps, every block of each of its kinds (`depth` each)
    chosen; `options` override any of these."""
    from regional_layout.attention_patches.flux_patch import RegionalFluxOptions, RegionalFluxWrapper

    blocks = frozenset(range(depth))
    defaults = dict(beta=0.0, control_steps=2, **{f"{kind}_blocks": blocks for kind in family.block_kinds})
    return RegionalFluxWrapper(cond, RegionalFluxOptions(**{**defaults, **options}), family)


def region_pixels(wrapper, index: int, latent: tuple[int, int], base_len: int, patch: int = 2) -> torch.Tensor:
    """The latent pixels region `index`'s tokens cover (patch x patch per token, cut to the latent's size)."""
    plan = wrapper.plan(*latent, base_len)
    grid = plan.masks.hard[index].view(*plan.masks.grid)
    return grid.repeat_interleave(patch, 0).repeat_interleave(patch, 1)[: latent[0], : latent[1]]


def with_region_embedding(cond, other, index: int):
    """`cond` with region `index`'s prompt embedding taken from `other` (the same layout)."""
    embeds = list(cond.embeds)
    embeds[index] = other.embeds[index]
    return type(cond)(cond.layout, tuple(embeds), cond.background)


def assert_untouched(model: torch.nn.Module, plain: Callable[[], torch.Tensor], regional: Callable[[], object]):
    """A regional call changes no weight, and the plain model gives the same result before and after it."""
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    before = plain()
    regional()
    assert torch.equal(plain(), before)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
