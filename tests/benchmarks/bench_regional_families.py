"""Benchmark: per-step time and peak memory of each supported model family, plain against Regional (R = 4, 16).

Each family's own ComfyUI class at full width with random bf16 weights (1 double + 1 single block by default; on a
GPU pass the real depths), called the way ComfyUI calls it; regions of 30 real tokens tiling the picture, β = 0.2,
every block controlled, the grouped path. The configurations are interleaved within each round, each step timed
between two plain steps of the same family (ratios to their mean), as in bench_regional_flux.py.

    python3 scripts/dev.py bench regional_families
    python3 scripts/dev.py bench regional_families --device cuda --full-depth

Qwen-Image (double-stream blocks only) gets double + single double-stream blocks and its unpadded 64-token base
prompt (FLUX.1 and Chroma: T5 padded to 256).

Z-Image gets its 2 + 2 refiner layers and `double` joint layers, a 64-token base prompt. SD3.5 (Medium: 24 heads,
x_block_self_attn in blocks 0-12) gets double + single joint blocks, called through its BaseModel's apply_model
(where the wrapper sits for SD3); its base prompt is 154 padded tokens.

Ends with: regional_families: flux1_r4=… flux2_r4=… chroma_r4=… qwen_image_r4=… zimage_r4=… sd35_r4=… (time ratios to plain at the first size),
then regional_families_memory: flux1_r16_gb=… chroma_r16_gb=… qwen_image_r16_gb=… (extra peak memory at R = 16).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_regional_flux import (
    BASE_TOKENS,
    PeakCuda,
    PeakRss,
    random_fill,
    _paths,  # noqa: E402
    full_width_flux,
    make_wrapper,
    timed_step,
)


@dataclass
class FamilyBench:
    key: str
    build: Callable  # (double, single, device) -> model
    inputs: Callable  # (latent, prompt, device) -> positional inputs of the model's forward
    full_depth: tuple[int, int]  # (double, single) blocks of the released model
    text_width: int = 4096
    base_tokens: int = BASE_TOKENS  # the base prompt as the family's tokenizer hands it over (padded or not)


def build_chroma(double: int, single: int, device: str):
    import torch
    import comfy.ops
    from comfy.ldm.chroma.model import Chroma

    from rl_devkit.tiny_models import CHROMA_DIT

    model = Chroma(
        **CHROMA_DIT,
        depth=double,
        depth_single_blocks=single,
        dtype=torch.bfloat16,
        device=device,
        operations=comfy.ops.manual_cast,
    )
    return random_fill(model, device)


def build_qwen_image(double: int, single: int, device: str):
    """Qwen-Image has only double-stream blocks: a (double, single) pair becomes double + single of them."""
    import torch
    import comfy.ops
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=double + single,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=3584,
        axes_dims_rope=(16, 56, 56),
        image_model="qwen_image",
        dtype=torch.bfloat16,
        device=device,
        operations=comfy.ops.manual_cast,
    )
    return random_fill(model, device)


def build_flux2(double: int, single: int, device: str):
    """FLUX.2 dev's blocks at full width (hidden 6144, 48 heads, 15360-wide text), random bf16 weights."""
    import torch
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    from rl_devkit.tiny_models import FLUX2_DIT, flux2_params

    config = {**FLUX2_DIT, "depth": double, "depth_single_blocks": single}
    model = Flux(**flux2_params(config), dtype=torch.bfloat16, device=device, operations=comfy.ops.manual_cast)
    return random_fill(model, device)


def build_zimage(double: int, single: int, device: str):
    """Z-Image at full width (3840, 30 heads, its 2 + 2 refiner layers) with `double` joint layers."""
    import torch
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT

    from rl_devkit.tiny_models import ZIMAGE_DIT

    model = NextDiT(
        **ZIMAGE_DIT,
        dim=3840,
        n_layers=double,
        n_refiner_layers=2,
        n_heads=30,
        n_kv_heads=30,
        cap_feat_dim=2560,
        axes_dims=[32, 48, 48],
        dtype=torch.bfloat16,
        device=device,
        operations=comfy.ops.manual_cast,
    )
    return random_fill(model, device)


def zimage_inputs(latent, prompt, device):
    import torch

    return (latent, torch.tensor([1.0], device=device), prompt, prompt.shape[1])  # num_tokens


def build_sd35(double: int, single: int, device: str):
    """SD3.5 Medium's MMDiT at full width (hidden 1536, 24 heads; an image-only x_block_self_attn in blocks 0-12)
    with double + single joint blocks, random bf16 weights, inside ComfyUI's SD3 BaseModel (the regional wrapper
    sits on its apply_model)."""
    import torch
    import comfy.model_base
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    mmdit = OpenAISignatureMMDITWrapper(
        input_size=None,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        depth=24,
        num_blocks=double + single,
        adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 1536}},
        num_patches=384 * 384,
        pos_embed_max_size=384,
        qk_norm="rms",
        x_block_self_attn_layers=list(range(13)),
        dtype=torch.bfloat16,
        device=device,
        operations=comfy.ops.manual_cast,
    )
    random_fill(mmdit, device)
    mmdit.pos_embed.normal_(0.0, 1.0)  # a buffer: random_fill leaves it uninitialised
    config = comfy.supported_models.SD3({"in_channels": 16, "disable_unet_model_creation": True})
    model = comfy.model_base.SD3(config, device=torch.device(device))
    model.diffusion_model = mmdit
    return model


def sd35_inputs(latent, prompt, device):
    import torch

    # BaseModel.apply_model(x, sigma, c_concat, c_crossattn): the pooled vector (a kwarg) is left out, one add
    return (latent, torch.tensor([1.0], device=device), None, prompt)


def flux2_inputs(latent, prompt, device):
    import torch

    return (latent, torch.tensor([1.0], device=device), prompt, None, torch.tensor([3.5], device=device))


def qwen_image_inputs(latent, prompt, device):
    import torch

    return (latent.unsqueeze(2), torch.tensor([1.0], device=device), prompt)  # [B, C, 1, H, W]


def flux_inputs(latent, prompt, device):
    import torch

    return (
        latent,
        torch.tensor([1.0], device=device),
        prompt,
        torch.randn(1, 768, device=device).bfloat16(),
        torch.tensor([3.5], device=device),
    )


def chroma_inputs(latent, prompt, device):
    import torch

    return (latent, torch.tensor([1.0], device=device), prompt, torch.zeros(1, device=device))


def families() -> dict:
    from regional_layout.attention_patches.families import CHROMA, FLUX1, FLUX2, QWEN_IMAGE, SD3, ZIMAGE

    return {
        FLUX1: FamilyBench("flux1", full_width_flux, flux_inputs, (19, 38)),
        # Mistral 3 hidden states of three layers, 15360 wide, left-padded to 512 by Flux2.extra_conds
        FLUX2: FamilyBench("flux2", build_flux2, flux2_inputs, (8, 48), text_width=15360, base_tokens=512),
        CHROMA: FamilyBench("chroma", build_chroma, chroma_inputs, (19, 38)),
        # Qwen2.5-VL hidden states, 3584 wide; its tokenizer does not pad (a ~40-word prompt)
        QWEN_IMAGE: FamilyBench(
            "qwen_image", build_qwen_image, qwen_image_inputs, (60, 0), text_width=3584, base_tokens=64
        ),
        # Qwen3 4B hidden states, 2560 wide, unpadded (the model pads the caption to 32 itself)
        ZIMAGE: FamilyBench("zimage", build_zimage, zimage_inputs, (30, 0), text_width=2560, base_tokens=64),
        # CLIP-L | CLIP-G (77, widened to 4096) then T5 padded to 77; region texts keep their padding too
        SD3: FamilyBench("sd35", build_sd35, sd35_inputs, (24, 0), base_tokens=154),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--double", type=int, default=1)
    parser.add_argument("--single", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-depth", action="store_true", help="every family at its released depth (a GPU)")
    parser.add_argument("--families", default="", help="comma-separated family keys (default: all)")
    args = parser.parse_args(argv)
    _paths(cpu=args.device == "cpu")
    import gc

    import torch

    device = torch.device(args.device)
    peak = PeakRss() if device.type == "cpu" else PeakCuda()
    wanted = {k for k in args.families.split(",") if k}
    ratios, memory = {}, {}
    for family, bench in families().items():
        if wanted and bench.key not in wanted:
            continue
        depth = bench.full_depth if args.full_depth else (args.double, args.single)
        model = bench.build(*depth, args.device)
        # (double, single); Qwen-Image, Z-Image and SD3 have no single blocks
        blocks = (*family.blocks(family.diffusion_model(model)), 0, 0)[:2]
        for size in [int(s) for s in args.sizes.split(",")]:
            gen = torch.Generator().manual_seed(size)
            side = size // family.vae_scale  # FLUX.2: 1/16 of the picture
            latent = torch.randn(1, family.latent_channels, side, side, generator=gen).bfloat16().to(device)
            prompt = torch.randn(1, bench.base_tokens, bench.text_width, generator=gen).bfloat16().to(device)
            inputs = bench.inputs(latent, prompt, device)
            configs = {
                "plain": None,
                **{
                    f"R={r}": make_wrapper(r, size, False, 0.2, blocks, family=family, width=bench.text_width)
                    for r in (4, 16)
                },
            }
            for wrapper in configs.values():
                timed_step(model, inputs, wrapper)  # warm-up and token plans
            times = {k: [] for k in configs}
            paired = {k: [] for k in configs if k != "plain"}
            for _ in range(args.rounds):
                before = timed_step(model, inputs, None)
                times["plain"].append(before)
                for name, wrapper in configs.items():
                    if wrapper is None:
                        continue
                    times[name].append(timed_step(model, inputs, wrapper))
                    after = timed_step(model, inputs, None)
                    paired[name].append(times[name][-1] / ((before + after) / 2))
                    before = after
            peak.fix_mmap_threshold()
            mems = {}
            for name, wrapper in configs.items():
                with peak:
                    timed_step(model, inputs, wrapper)
                mems[name] = peak.peak
            print(f"\n{bench.key} ({family.name}), {size}x{size}, {blocks} blocks")
            print("| config | step s (median) | time ratio | extra peak GB |")
            print("|---|---|---|---|")
            for name in configs:
                ratio = statistics.median(paired[name]) if name in paired else 1.0
                extra = (mems[name] - mems["plain"]) / 2**30
                print(f"| {name} | {statistics.median(times[name]):.4f} | {ratio:.3f} | {extra:+.3f} |", flush=True)
                ratios.setdefault((bench.key, name), ratio)
                memory.setdefault((bench.key, name), extra)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    keys = [b.key for b in families().values() if not wanted or b.key in wanted]
    print("regional_families: " + " ".join(f"{k}_r4={ratios[(k, 'R=4')]:.3f}" for k in keys))
    print("regional_families_memory: " + " ".join(f"{k}_r16_gb={memory[(k, 'R=16')]:.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
