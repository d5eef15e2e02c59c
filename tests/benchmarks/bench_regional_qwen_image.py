"""Benchmark: per-step time and peak memory of plain Qwen-Image against regional Qwen-Image (R = 4 and 16 regions).

A full-width Qwen-Image block stack (hidden 3072, 24 heads, joint_attention_dim 3584, RoPE axes (16, 56, 56),
random weights, bfloat16; 2 double-stream blocks by default: Qwen-Image has no single-stream blocks) built from
ComfyUI's own class. Qwen-Image's text encoder does not pad, so the base prompt is BASE_TOKENS real tokens; each
region adds a ~20-word prompt (REGION_TOKENS), beta = 0.2, every block controlled. Also timed: plain Qwen-Image with
a prompt as long as the R=4 / R=16 runs' text (the cost of the extra text tokens alone). Measured like
bench_regional_flux.py (configurations interleaved in each round between plain steps; the ratio is the median over
the rounds of a step over the mean of the plain steps around it; memory: the peak resident set of one more step).

    python3 scripts/dev.py python tests/benchmarks/bench_regional_qwen_image.py      # or, with the venv:
    COMFYUI_PATH=.comfyui PYTHONPATH=.comfyui:scripts:.cache/import .venv/bin/python tests/benchmarks/bench_regional_qwen_image.py

Ends with: regional_qwen_image: r4_time_ratio=… r16_time_ratio=… r16_extra_peak_mem_gb=… (1024x1024).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_regional_flux import PeakRss, _paths, region_masks, step, timed_step  # noqa: E402

BASE_TOKENS = 64       # a ~40-word prompt: Qwen-Image's tokenizer does not pad
REGION_TOKENS = 30     # a ~20-word prompt
WIDTH = 3584           # Qwen2.5-VL 7B hidden states


def make_wrapper(regions: int, size: int, beta: float, depth: int):
    import torch

    from regional_layout.attention_patches.families import QWEN_IMAGE
    from regional_layout.attention_patches.flux_patch import RegionalFluxOptions, RegionalFluxWrapper
    from regional_layout.attention_patches.regional_cond import RegionalConditioning
    from regional_layout.layout.regions import Region, RegionLayout

    gen = torch.Generator().manual_seed(regions)
    layout = RegionLayout(size, size, tuple(Region(f"r{i}", m) for i, m in enumerate(region_masks(regions, size))))
    embeds = tuple(torch.randn(1, REGION_TOKENS, WIDTH, generator=gen) for _ in range(regions))
    options = RegionalFluxOptions(beta=beta, control_steps=1000, double_blocks=frozenset(range(depth)))
    return RegionalFluxWrapper(RegionalConditioning(layout, embeds), options, QWEN_IMAGE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="square picture size in pixels")
    parser.add_argument("--regions", default="4,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=2, help="double-stream blocks in the stack")
    parser.add_argument("--beta", type=float, default=0.2)
    args = parser.parse_args(argv)
    _paths()
    import torch

    from rl_devkit.tiny_models import small_qwen_image

    model = small_qwen_image(hidden_size=3072, num_heads=24, depth=args.depth, joint_attention_dim=WIDTH,
                             axes_dims_rope=(16, 56, 56), dtype=torch.bfloat16)
    regions = [int(r) for r in args.regions.split(",") if r]
    size = args.size
    gen = torch.Generator().manual_seed(size)
    latent = torch.randn(1, 16, 1, size // 8, size // 8, generator=gen).bfloat16()
    prompt = torch.randn(1, BASE_TOKENS + REGION_TOKENS * max(regions), WIDTH, generator=gen).bfloat16()
    t = torch.tensor([1.0])
    configs = {"plain": ((latent, t, prompt[:, :BASE_TOKENS]), None, BASE_TOKENS)}
    for r in regions:
        configs[f"R={r}"] = ((latent, t, prompt[:, :BASE_TOKENS]), make_wrapper(r, size, args.beta, args.depth),
                             BASE_TOKENS + r * REGION_TOKENS)
        tokens = BASE_TOKENS + r * REGION_TOKENS
        configs[f"plain, {tokens}-token prompt"] = ((latent, t, prompt[:, :tokens]), None, tokens)
    print(f"Qwen-Image stack: {args.depth} double blocks, hidden 3072, 24 heads, bfloat16, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds, {size}x{size} "
          f"({(size // 16) ** 2} image tokens)", flush=True)
    for inputs, wrapper, _ in configs.values():  # warm-up (and the token plans, built once per sampling run)
        step(model, inputs, wrapper)
    plain_inputs = configs["plain"][0]
    times = {k: [] for k in configs}
    paired = {k: [] for k in configs if k != "plain"}
    for _ in range(args.rounds):
        before = timed_step(model, plain_inputs, None)
        times["plain"].append(before)
        for name, (inputs, wrapper, _) in configs.items():
            if name == "plain":
                continue
            times[name].append(timed_step(model, inputs, wrapper))
            after = timed_step(model, plain_inputs, None)
            times["plain"].append(after)
            paired[name].append(times[name][-1] / ((before + after) / 2))
            before = after
    peak = PeakRss()
    peak.fix_mmap_threshold()
    mems = {}
    for name, (inputs, wrapper, _) in configs.items():
        with peak:
            step(model, inputs, wrapper)
        mems[name] = peak.peak
    ratios = {"plain": 1.0, **{k: statistics.median(v) for k, v in paired.items()}}
    print("| config | text tokens | step s (median) | time ratio | peak MB | extra peak GB |")
    print("|---|---|---|---|---|---|")
    for name, (_, _, tokens) in configs.items():
        print(f"| {name} | {tokens} | {statistics.median(times[name]):.3f} | {ratios[name]:.3f} | "
              f"{mems[name] / 2**20:.0f} | {(mems[name] - mems['plain']) / 2**30:+.3f} |", flush=True)
    if "R=4" in ratios and "R=16" in ratios:
        print(f"regional_qwen_image: r4_time_ratio={ratios['R=4']:.3f} r16_time_ratio={ratios['R=16']:.3f} "
              f"r16_extra_peak_mem_gb={(mems['R=16'] - mems['plain']) / 2**30:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
