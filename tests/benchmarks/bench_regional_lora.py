"""Benchmark: Regional LoRA's cost inside the regional pass.

The full-width FLUX block pair of bench_regional_flux (hidden 3072, 24 heads, bfloat16, 1 double + 1 single block,
ComfyUI's own Flux class), 1024 x 1024, R = 4 regions (beta 0.2, every block), against the same regional step with
one rank-16 LoRA on each of two regions. Each LoRA covers every token Linear of the blocks (img/txt attention qkv and
proj, img/txt MLPs, linear1, linear2), as FLUX LoRA trainers do; the LoRAs go through ComfyUI's load_lora and the
node's own adapter, and their Linear copies are put into the model for the LoRA steps only.
Timing as bench_regional_flux: both configurations once untimed, then interleaved per round; the ratio is the
median over the rounds of the LoRA step over the mean of the plain regional steps just before and after it.
Memory: peak resident set of one more step each, after the timing (Linux), and the LoRA tensors' own size.

    python3 scripts/dev.py bench regional_lora -- --rounds 3

Ends with: regional_lora: time_ratio=… extra_peak_mem_gb=…
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_regional_flux as base  # noqa: E402

RANK = 16
LAYERS = (
    "img_attn.qkv",
    "img_attn.proj",
    "img_mlp.0",
    "img_mlp.2",
    "txt_attn.qkv",
    "txt_attn.proj",
    "txt_mlp.0",
    "txt_mlp.2",
)


def lora_file(flux, seed: int):
    """A rank-16 LoRA (ComfyUI's `diffusion_model.<layer>.lora_up/lora_down/alpha` keys, bfloat16) on every token
    Linear of the stack."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    layers = [f"double_blocks.{i}.{name}" for i in range(len(flux.double_blocks)) for name in LAYERS]
    layers += [f"single_blocks.{i}.linear{j}" for i in range(len(flux.single_blocks)) for j in (1, 2)]
    shapes = {k: v.shape for k, v in flux.named_parameters()}
    out = {}
    for layer in layers:
        o, i = shapes[f"{layer}.weight"]
        out[f"diffusion_model.{layer}.lora_up.weight"] = (torch.randn(o, RANK, generator=gen) / RANK).bfloat16()
        out[f"diffusion_model.{layer}.lora_down.weight"] = (torch.randn(RANK, i, generator=gen) / i**0.5).bfloat16()
        out[f"diffusion_model.{layer}.alpha"] = torch.tensor(float(RANK))
    return out


def regional_lora_modules(flux, wrapper, loras: list[tuple[dict, int]]):
    """{layer: Linear copy} and the LoRA wrapper for `loras` ((file, region row) pairs), built by the node's code on
    a ModelPatcher of `flux` (the model itself is not changed)."""
    import comfy.lora
    import comfy.model_patcher
    import torch

    from regional_layout.attention_patches.families import FLUX1
    from regional_layout.attention_patches.flux_patch import PATCH_KEY
    from regional_layout.nodes.regional_lora import LORA_KEY, PREFIX, apply_regional_lora, lora_updates

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = flux

    mp = comfy.model_patcher.ModelPatcher(Holder(), torch.device("cpu"), torch.device("cpu"))
    mp.add_wrapper_with_key("diffusion_model", PATCH_KEY, wrapper)
    key_map = {f"{PREFIX}{k[: -len('.weight')]}": f"{PREFIX}{k}" for k in flux.state_dict() if k.endswith(".weight")}
    for lora, row in loras:
        updates, _ = lora_updates(comfy.lora.load_lora(lora, key_map, log_missing=False), row, 1.0, "bench", flux)
        mp = apply_regional_lora(mp, updates, FLUX1, wrapper)
    modules = {k[len(PREFIX) :]: v for k, v in mp.object_patches.items()}
    return modules, mp.get_wrappers("diffusion_model", LORA_KEY)[0]


@contextmanager
def installed(flux, modules: dict):
    """The Linear copies in place of the model's Linears for one step (what ModelPatcher's object patches do)."""
    import comfy.utils

    old = {k: comfy.utils.set_attr(flux, k, m) for k, m in modules.items()}
    try:
        yield
    finally:
        for k, m in old.items():
            comfy.utils.set_attr(flux, k, m)


def step(flux, inputs, wrappers: dict):
    import torch

    opts = {"cond_or_uncond": [0], "sigmas": torch.tensor([1.0]), "wrappers": {"diffusion_model": wrappers}}
    with torch.inference_mode():
        return flux(*inputs, transformer_options=opts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--regions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--double", type=int, default=1)
    parser.add_argument("--single", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    base._paths(cpu=True)
    import time

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size
    flux = base.full_width_flux(args.double, args.single, "cpu")
    wrapper = base.make_wrapper(args.regions, size, False, 0.2, (args.double, args.single))
    loras = [lora_file(flux, 1), lora_file(flux, 2)]
    lora_bytes = sum(t.numel() * t.element_size() for lora in loras for t in lora.values())
    modules, lora_wrapper = regional_lora_modules(flux, wrapper, [(loras[0], 0), (loras[1], 1)])
    gen = torch.Generator().manual_seed(size)
    inputs = (
        torch.randn(1, 16, size // 8, size // 8, generator=gen).bfloat16(),
        torch.tensor([1.0]),
        torch.randn(1, base.BASE_TOKENS, 4096, generator=gen).bfloat16(),
        torch.randn(1, 768, generator=gen).bfloat16(),
        torch.tensor([3.5]),
    )
    regional = {"regional_flux": [wrapper]}
    with_lora = {"regional_flux": [wrapper], "regional_lora": [lora_wrapper]}

    def timed(wrappers, mods) -> float:
        with installed(flux, mods):
            started = time.perf_counter()
            step(flux, inputs, wrappers)
            return time.perf_counter() - started

    print(
        f"FLUX stack: {args.double} double + {args.single} single blocks, hidden 3072, bfloat16, "
        f"{torch.get_num_threads()} threads, {size}x{size}, R={args.regions}, 2 rank-{RANK} LoRAs "
        f"({lora_bytes / 2**20:.1f} MB), {args.rounds} rounds",
        flush=True,
    )
    timed(regional, {})
    timed(with_lora, modules)
    times = {"regional": [], "regional + 2 LoRAs": []}
    ratios = []
    before = timed(regional, {})
    times["regional"].append(before)
    for _ in range(args.rounds):
        t = timed(with_lora, modules)
        after = timed(regional, {})
        times["regional + 2 LoRAs"].append(t)
        times["regional"].append(after)
        ratios.append(t / ((before + after) / 2))
        before = after
    peak = base.PeakRss()
    peak.fix_mmap_threshold()
    mems = {}
    for name, wrappers, mods in (("regional", regional, {}), ("regional + 2 LoRAs", with_lora, modules)):
        with installed(flux, mods), peak:
            step(flux, inputs, wrappers)
        mems[name] = peak.peak
    ratio = statistics.median(ratios)
    extra = (mems["regional + 2 LoRAs"] - mems["regional"]) / 2**30
    print("| config | step s (median) | time ratio | peak MB | extra peak GB |")
    print("|---|---|---|---|---|")
    for name in times:
        r = 1.0 if name == "regional" else ratio
        print(
            f"| {name} | {statistics.median(times[name]):.3f} | {r:.3f} | {mems[name] / 2**20:.0f} | "
            f"{(mems[name] - mems['regional']) / 2**30:+.3f} |"
        )
    print(f"regional_lora: time_ratio={ratio:.3f} extra_peak_mem_gb={extra:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
