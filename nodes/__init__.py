"""The pack's node list (V3 schema)."""

from comfy_api.latest import ComfyExtension, io

from .gligen_prior import GligenLayoutPrior
from .guided_sampler import BackwardGuidanceKSampler
from .latent_inversion import LatentInversion
from .region_layout import RegionLayoutNode, RegionsFromColorMap
from .region_overlay import RegionOverlay
from .regional_flux_patch import RegionalFluxPatch
from .regional_lora import RegionalLora
from .regional_prompt_encode import RegionalPromptEncode
from .regions_from_masks import RegionsFromMasks

NODES: list[type[io.ComfyNode]] = [
    RegionsFromMasks,
    RegionOverlay,
    RegionLayoutNode,
    RegionsFromColorMap,
    RegionalPromptEncode,
    RegionalFluxPatch,
    RegionalLora,
    GligenLayoutPrior,
    LatentInversion,
    BackwardGuidanceKSampler,
]


class RegionalLayoutExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
