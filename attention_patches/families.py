"""What differs between the joint-attention model families regional prompting serves, in one declarative table.

The attention rule itself (regional_attention) is the same for every family; a family only says how its model is
called and how its joint sequence is laid out. Plain Python: nothing here imports ComfyUI (the nodes map ComfyUI's
model classes onto these entries).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    key: str
    name: str                        # as users know it, for messages
    # positional arguments the DIFFUSION_MODEL wrapper receives before transformer_options (the model's forward)
    forward_args: tuple[str, ...]
    latent_channels: int             # of the latent the sampler hands the model (without concatenated channels)
    patch_size: int = 2              # latent pixels per token side
    text_first: bool = True          # joint sequence [text | image]; the regional texts go before the base text
    block_kinds: tuple[str, ...] = ("double", "single")  # block_type values, in the order the model runs them
    reference_tokens: bool = False   # `ref_latents` add image tokens after the grid (FLUX.1 Kontext)
    latent_hint: str = "EmptySD3LatentImage"
    text_encoder_hint: str = "DualCLIPLoader, type flux"

    def blocks(self, model) -> tuple[int, ...] | None:
        """How many blocks of each kind `model` has (its `<kind>_blocks` lists), or None if it is not at hand."""
        if model is None or not all(hasattr(model, f"{kind}_blocks") for kind in self.block_kinds):
            return None
        return tuple(len(getattr(model, f"{kind}_blocks")) for kind in self.block_kinds)


FLUX1 = ModelFamily("flux1", "FLUX.1", ("x", "timestep", "context", "y", "guidance", "ref_latents", "control"),
                    latent_channels=16, reference_tokens=True)
CHROMA = ModelFamily("chroma", "Chroma", ("x", "timestep", "context", "guidance", "control"), latent_channels=16,
                     text_encoder_hint="CLIPLoader, type chroma (T5-XXL)")

FAMILIES = {family.key: family for family in (FLUX1, CHROMA)}
