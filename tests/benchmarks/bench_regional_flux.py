"""Benchmark: per-step time and peak memory of plain FLUX against Regional FLUX (R = 1, 2, 4, 8, 16 regions).

A full-width FLUX block stack (hidden 3072, 24 heads, FLUX.1's RoPE axes, random weights; 1 double + 1 single
block by default) built from ComfyUI's own Flux class, in bfloat16 as FLUX runs. Plain FLUX gets the base prompt
as ComfyUI pads it (256 T5 tokens); each region adds a ~20-word prompt (30 real T5 tokens), beta = 0.2, every block
controlled. Also timed: R=4 with beta = 0, and plain FLUX given a prompt as long as the R=4 and R=16 runs' text
(what the extra text tokens cost by themselves, without any regional attention). Every configuration runs once
untimed first; then they are interleaved within each round, each between two plain steps; the time ratio is the
median over the rounds of its step over the mean of the plain steps just before and after it (robust to the
machine's drift, which reaches ±20 % over minutes here), the step time the median of the rounds.
Peak memory (one more step per configuration, after the timed rounds) is the process's peak resident set during
the step minus the resident set before it (Linux).

    python3 scripts/dev.py python tests/benchmarks/bench_regional_flux.py          # or, with the venv:
    COMFYUI_PATH=.comfyui PYTHONPATH=.comfyui:scripts:.cache/import .venv/bin/python tests/benchmarks/bench_regional_flux.py

    ... --device cuda --double 19 --single 38                                     # full-depth FLUX.1 on a GPU

Ends with: regional_flux: r4_time_ratio=… r16_time_ratio=… r16_extra_peak_mem_gb=… r4_every2_time_ratio=… (1024x1024;
the last only with 2+ blocks of each kind, where 'every 2' differs from 'all').
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_TOKENS = 256  # ComfyUI's FLUX T5 tokenizer pads the prompt to at least 256 tokens
REGION_TOKENS = 30  # a ~20-word prompt, real tokens only


def _paths(cpu: bool = True) -> None:
    link = REPO / ".cache" / "import" / "regional_layout"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(REPO, target_is_directory=True)
    comfy = Path(os.environ.get("COMFYUI_PATH", REPO / ".comfyui"))
    for p in (str(link.parent), str(REPO / "scripts"), str(comfy)):
        if p not in sys.path:
            sys.path.insert(0, p)
    from comfy.cli_args import args

    args.cpu = cpu
    args.use_pytorch_cross_attention = True  # as the test server runs: plain FLUX uses torch SDPA (flash on CPU)


class PeakCuda:
    """Peak CUDA memory allocated during a block of code, above what was allocated before it."""

    def fix_mmap_threshold(self) -> None:
        pass

    def __enter__(self) -> "PeakCuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated() - self.base


class PeakRss:
    """Peak resident memory of a block of code (Linux: VmHWM, reset through /proc/self/clear_refs)."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL("libc.so.6")

    def fix_mmap_threshold(self) -> None:
        """Large tensors go back to the OS when freed (M_MMAP_THRESHOLD fixed at 128 KiB), so the resident set
        follows what is live. Costs page faults: call it after the timed rounds."""
        self.libc.mallopt(-3, 128 * 1024)

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def __enter__(self) -> "PeakRss":
        gc.collect()
        self.libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        self.base = self._status("VmRSS:")
        return self

    def __exit__(self, *exc) -> None:
        self.peak = self._status("VmHWM:") - self.base


def region_masks(regions: int, size: int):
    """`regions` rectangles tiling the picture (a near-square grid; the last row takes the rest)."""
    import math

    import torch

    cols = math.ceil(math.sqrt(regions))
    rows = math.ceil(regions / cols)
    masks = []
    for i in range(regions):
        r, c = divmod(i, cols)
        m = torch.zeros(size, size)
        y0, y1 = r * size // rows, (r + 1) * size // rows
        last_in_row = c == cols - 1 or i == regions - 1
        x0, x1 = c * size // cols, size if last_in_row else (c + 1) * size // cols
        if r == rows - 1 and i == regions - 1:
            y1 = size
        m[y0:y1, x0:x1] = 1
        masks.append(m)
    return torch.stack(masks)


def make_wrapper(
    regions: int,
    size: int,
    dense: bool,
    beta: float,
    blocks: tuple[int, int],
    every: int = 1,
    family=None,
    width: int = 4096,
):
    import torch

    from regional_layout.attention_patches.families import FLUX1
    from regional_layout.attention_patches.flux_patch import RegionalFluxOptions, RegionalFluxWrapper
    from regional_layout.attention_patches.regional_cond import RegionalConditioning
    from regional_layout.layout.regions import Region, RegionLayout

    gen = torch.Generator().manual_seed(regions)
    layout = RegionLayout(size, size, tuple(Region(f"r{i}", m) for i, m in enumerate(region_masks(regions, size))))
    embeds = tuple(torch.randn(1, REGION_TOKENS, width, generator=gen) for _ in range(regions))
    options = RegionalFluxOptions(
        beta=beta,
        control_steps=1000,
        double_blocks=frozenset(range(0, blocks[0], every)),
        single_blocks=frozenset(range(0, blocks[1], every)),
        force_dense=dense,
    )
    return RegionalFluxWrapper(RegionalConditioning(layout, embeds), options, family or FLUX1)


def step(flux, inputs, wrapper):
    import torch

    opts = {"cond_or_uncond": [0], "sigmas": torch.tensor([1.0])}
    if wrapper is not None:  # on the family's wrapper point: SD3's is its BaseModel's apply_model
        opts["wrappers"] = {wrapper.family.wraps: {"regional_flux": [wrapper]}}
    with torch.inference_mode():
        return getattr(flux, "apply_model", flux)(*inputs, transformer_options=opts)


def timed_step(flux, inputs, wrapper) -> float:
    import torch

    cuda = inputs[0].is_cuda
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    step(flux, inputs, wrapper)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def full_width_flux(double: int, single: int, device: str):
    """FLUX.1's block stack at full width (hidden 3072, 24 heads) with random weights, in bfloat16. On CUDA it is
    built in place with N(0, 1/fan_in) weights (a full-depth FLUX.1 would take long to fill on the CPU)."""
    import torch

    from rl_devkit.tiny_models import small_flux

    if device == "cpu":
        return small_flux(
            hidden_size=3072,
            num_heads=24,
            depth=double,
            depth_single_blocks=single,
            context_in_dim=4096,
            vec_in_dim=768,
            axes_dim=[16, 56, 56],
            dtype=torch.bfloat16,
        )
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    from rl_devkit.tiny_models import FLUX_DIT

    flux = Flux(
        **FLUX_DIT,
        depth=double,
        depth_single_blocks=single,
        guidance_embed=True,
        dtype=torch.bfloat16,
        device=device,
        operations=comfy.ops.manual_cast,
    )
    return random_fill(flux, device)


def random_fill(model, device: str):
    """Seeded N(0, 1/fan_in) matrices and unit vectors, filled where the model lies (fast on a GPU)."""
    import torch

    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.ndim > 1:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=gen)
            else:
                param.fill_(1.0)
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,512", help="square picture sizes in pixels")
    parser.add_argument("--regions", default="1,2,4,8,16")
    parser.add_argument(
        "--dense",
        default="4,16",
        help="region counts also timed on the exact dense path (what soft or overlapping masks take)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--double", type=int, default=1, help="double blocks in the stack")
    parser.add_argument("--single", type=int, default=1, help="single blocks in the stack")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--beta", type=float, default=0.2)
    parser.add_argument(
        "--beta0", default="4", help="region counts also timed with beta = 0 (no base attention for the image rows)"
    )
    parser.add_argument(
        "--every2",
        default="4",
        help="region counts also timed with only every second block of "
        "each kind masked ('every 2'; the others run the unmasked regional stream)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU (memory is then CUDA's peak)")
    parser.add_argument(
        "--long-prompt",
        default="4,16",
        help="region counts whose total text length is also timed "
        "as plain FLUX with a prompt that long (the cost of the extra text tokens alone)",
    )
    args = parser.parse_args(argv)
    _paths(cpu=args.device == "cpu")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    flux = full_width_flux(args.double, args.single, args.device)
    peak = PeakRss() if device.type == "cpu" else PeakCuda()
    counts = {
        name: [int(r) for r in getattr(args, name).split(",") if r]
        for name in ("regions", "dense", "beta0", "every2", "long_prompt")
    }
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"FLUX stack: {args.double} double + {args.single} single blocks, hidden 3072, 24 heads, bfloat16, "
        f"{where}, {args.rounds} rounds",
        flush=True,
    )
    summary = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        gen = torch.Generator().manual_seed(size)
        latent = torch.randn(1, 16, size // 8, size // 8, generator=gen).bfloat16().to(device)
        prompt = (
            torch.randn(1, BASE_TOKENS + REGION_TOKENS * max(counts["long_prompt"], default=0), 4096, generator=gen)
            .bfloat16()
            .to(device)
        )
        rest = (torch.randn(1, 768, generator=gen).bfloat16().to(device), torch.tensor([3.5], device=device))
        inputs = (latent, torch.tensor([1.0], device=device), prompt[:, :BASE_TOKENS], *rest)
        blocks = (args.double, args.single)
        # name -> (model inputs, regional wrapper or None, text tokens)
        configs = {"plain": (inputs, None, BASE_TOKENS)}
        for label, key, dense, beta, every in (
            ("R={}", "regions", False, args.beta, 1),
            ("R={} beta=0", "beta0", False, 0.0, 1),
            ("R={} every 2", "every2", False, args.beta, 2),
            ("R={} dense", "dense", True, args.beta, 1),
        ):
            for r in counts[key] if key != "every2" or min(blocks) > 1 else ():  # 1 block: 'every 2' is 'all'
                configs[label.format(r)] = (
                    inputs,
                    make_wrapper(r, size, dense, beta, blocks, every),
                    BASE_TOKENS + r * REGION_TOKENS,
                )
        for r in counts["long_prompt"]:
            tokens = BASE_TOKENS + r * REGION_TOKENS
            configs[f"plain, {tokens}-token prompt"] = ((latent, inputs[1], prompt[:, :tokens], *rest), None, tokens)
        times: dict[str, list[float]] = {k: [] for k in configs}
        paired: dict[str, list[float]] = {k: [] for k in configs if k != "plain"}  # step / plain steps around it
        mems: dict[str, list[int]] = {k: [] for k in configs}
        for _, wrapper, _ in configs.values():  # build the token plans ahead (sampling builds them once per run)
            if wrapper is not None:
                plan = wrapper.plan(size // 8, size // 8, BASE_TOKENS)
                plan.dense_bias(device, torch.bfloat16) if plan.dense else plan.grouped_index(device)
                plan.regional_index(device)
        for config_inputs, wrapper, _ in configs.values():  # warm-up: first calls of new shapes set up kernels
            step(flux, config_inputs, wrapper)
        for _ in range(args.rounds):
            before = timed_step(flux, inputs, None)
            times["plain"].append(before)
            for name, (config_inputs, wrapper, _) in configs.items():
                if name == "plain":
                    continue
                times[name].append(timed_step(flux, config_inputs, wrapper))
                after = timed_step(flux, inputs, None)
                paired[name].append(times[name][-1] / ((before + after) / 2))
                before = after
        peak.fix_mmap_threshold()
        for name, (config_inputs, wrapper, _) in configs.items():  # memory: one more step each, after the timing
            with peak:
                step(flux, config_inputs, wrapper)
            mems[name].append(peak.peak)
        ratios = {"plain": 1.0, **{k: statistics.median(v) for k, v in paired.items()}}
        m_plain = statistics.median(mems["plain"])
        print(f"\n{size}x{size} ({(size // 16) ** 2} image tokens)")
        print("| config | text tokens | step s (median) | time ratio | peak MB | extra peak GB |")
        print("|---|---|---|---|---|---|")
        for name, (_, _, tokens) in configs.items():
            t, m = statistics.median(times[name]), statistics.median(mems[name])
            print(
                f"| {name} | {tokens} | {t:.4f} | {ratios[name]:.3f} | {m / 2**20:.0f} | "
                f"{(m - m_plain) / 2**30:+.3f} |",
                flush=True,
            )
            summary[(size, name)] = (ratios[name], (m - m_plain) / 2**30)
    # the summary reports the default path for hard, disjoint masks (grouped)
    r4, r16 = summary.get((1024, "R=4")), summary.get((1024, "R=16"))
    every2 = summary.get((1024, "R=4 every 2"))
    if r4 and r16:
        line = (
            f"regional_flux: r4_time_ratio={r4[0]:.3f} r16_time_ratio={r16[0]:.3f} r16_extra_peak_mem_gb={r16[1]:.3f}"
        )
        print(line + (f" r4_every2_time_ratio={every2[0]:.3f}" if every2 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
