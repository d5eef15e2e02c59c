"""LSReGen speed and memory, in one process: plain SDXL KSampler against the backward-guided sampler at the same
size and steps, and the whole pipeline (GLIGEN prior + decode + upscale + SDXL VAE encode + inversion + guided
sampling) against plain SDXL sampling. Prints a table and ends with
`lsregen: guided_step_time_ratio=… pipeline_time_ratio=… peak_mem_ratio=…`.

On CPU it runs the tiny random-weight models (real architectures, reduced widths) at a reduced size; with CUDA
it runs whatever checkpoints --models holds (use real SDXL/SD1.5/GLIGEN weights, or random ones of full size).

    .venv/bin/python tests/benchmarks/bench_lsregen.py [--size 256] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMFYUI = Path(os.environ.get("COMFYUI_PATH", REPO / ".comfyui"))
MODELS = Path(os.environ.get("RL_MODELS_DIR", REPO / ".cache" / "tiny_models"))


def setup_paths() -> None:
    link_dir = REPO / ".cache" / "import"
    link_dir.mkdir(parents=True, exist_ok=True)
    if not (link_dir / "regional_layout").is_symlink():
        (link_dir / "regional_layout").symlink_to(REPO, target_is_directory=True)
    for path in (str(link_dir), str(REPO / "tests"), str(COMFYUI)):
        if path not in sys.path:
            sys.path.insert(0, path)


class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated, or the process RSS sampled every 2 ms on CPU."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak, self._stop = cuda, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())


def timed(fn, cuda: bool):
    import torch

    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # CPU defaults fit a 24 GB machine in one process (at 512² and 30 steps the process grew past 24 GB: glibc
    # keeps the VAE's and the prior's freed buffers); CUDA defaults are the paper's scale.
    parser.add_argument("--size", type=int, help="SDXL width and height (CPU 256, CUDA 1024)")
    parser.add_argument("--prior-size", type=int, help="GLIGEN prior size (CPU 128, CUDA 512)")
    parser.add_argument("--steps", type=int, help="SDXL steps (CPU 10, CUDA 30)")
    parser.add_argument("--prior-steps", type=int, help="GLIGEN prior steps (CPU 5, CUDA 25)")
    parser.add_argument("--inversion-steps", type=int, help="coarse inversion steps (CPU 3, CUDA 10)")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (the minimum is kept)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    defaults = (1024, 512, 30, 25, 10) if torch.cuda.is_available() else (256, 128, 10, 5, 3)
    for name, value in zip(("size", "prior_size", "steps", "prior_steps", "inversion_steps"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)

    setup_paths()
    import torch

    torch.set_num_threads(args.threads)
    from comfy.cli_args import args as comfy_args

    cuda = torch.cuda.is_available()
    comfy_args.cpu = not cuda
    comfy_args.use_pytorch_cross_attention = True
    import comfy.sd
    import comfy.utils
    from regional_layout.guidance import sampling as S
    from regional_layout.guidance.backward import GuidanceSettings
    from regional_layout.guidance.gligen_prior import sample_prior
    from regional_layout.layout.boxes import parse_boxes
    from support import graphs

    def load(name):
        return comfy.sd.load_checkpoint_guess_config(str(MODELS / "checkpoints" / name), output_vae=True,
                                                     output_clip=True, embedding_directory=None)[:3]

    sdxl, sdxl_clip, sdxl_vae = load(graphs.SDXL)
    sd15, sd15_clip, sd15_vae = load(graphs.SD15)
    gligen = comfy.sd.load_gligen(str(MODELS / "gligen" / graphs.GLIGEN))
    positive = sdxl_clip.encode_from_tokens_scheduled(sdxl_clip.tokenize("a red car beside an oak tree"))
    negative = sdxl_clip.encode_from_tokens_scheduled(sdxl_clip.tokenize("blurry"))
    empty = sdxl_clip.encode_from_tokens_scheduled(sdxl_clip.tokenize(""))
    boxes = parse_boxes("0.05 0.3 0.4 0.5: a red car\n0.5 0.05 0.45 0.9: an oak tree")
    size, steps = args.size, args.steps
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}

    def plain():
        return S.sample(sdxl, 0, steps, 7.0, "euler", "normal", positive, negative, latent)

    def guided(trajectory, fraction):
        plan = S.GuidancePlan(trajectory, GuidanceSettings(0.2), fraction)
        return S.sample(sdxl, 0, steps, 7.0, "euler", "normal", positive, negative, latent, plan=plan)

    def pipeline():
        times = {}
        (image, _), times["prior"] = timed(lambda: sample_prior(
            sd15, sd15_clip, sd15_vae, gligen, boxes, "a country road", "", 0, args.prior_steps, 7.5, "euler",
            "normal", args.prior_size, args.prior_size), cuda)
        encoded, times["upscale+encode"] = timed(lambda: {"samples": sdxl_vae.encode(comfy.utils.common_upscale(
            image.movedim(-1, 1), size, size, "bicubic", "disabled").movedim(1, -1)[..., :3])}, cuda)
        (trajectory, _), times["inversion"] = timed(lambda: S.invert(
            sdxl, empty, encoded, steps, "normal", args.fraction, args.inversion_steps, "inversion", 0), cuda)
        _, times["guided"] = timed(lambda: guided(trajectory, args.fraction), cuda)
        return trajectory, times

    plain()  # warm-up: model loading and first-call costs stay out of the numbers
    trajectory, _ = pipeline()
    # Paired runs: each guided run and each pipeline is compared with the mean of the plain runs just before and
    # after it, so load changes on a shared machine cancel; the median over repeats is reported.
    best, step_ratios, pipeline_ratios = {}, [], []
    _, before = timed(plain, cuda)
    for _ in range(args.repeats):
        _, t_guided_all = timed(lambda: guided(trajectory, 1.0), cuda)
        _, parts = pipeline()
        _, after = timed(plain, cuda)
        reference = (before + after) / 2
        step_ratios.append(t_guided_all / reference)
        pipeline_ratios.append(sum(parts.values()) / reference)
        for key, value in [("plain", reference), ("guided_all_steps", t_guided_all), *parts.items()]:
            best[key] = min(best.get(key, float("inf")), value)
        before = after
    with PeakMemory(cuda) as mem_plain:
        plain()
    with PeakMemory(cuda) as mem_guided:
        guided(trajectory, 1.0)

    pipeline_total = sum(best[k] for k in ("prior", "upscale+encode", "inversion", "guided"))
    step_ratio = statistics.median(step_ratios)
    pipeline_ratio = statistics.median(pipeline_ratios)
    mem_ratio = mem_guided.peak / mem_plain.peak
    device = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} threads"
    print(f"\nLSReGen benchmark: {device}; SDXL {size}x{size}, {steps} steps euler/normal cfg 7; prior "
          f"{args.prior_size}x{args.prior_size}, {args.prior_steps} steps; inversion {args.inversion_steps} coarse "
          f"steps + ceil({args.fraction}x{steps}) guided sigmas; models from {MODELS}")
    print(f"(seconds: the fastest of {args.repeats} repeats; the summary ratios are medians of paired runs)")
    print(f"| {'measure':<40} | {'seconds':>9} | {'x plain':>8} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 10}|")
    rows = [("plain SDXL KSampler", best["plain"]),
            ("guided sampler, every step guided", best["guided_all_steps"]),
            ("pipeline: GLIGEN prior (+decode)", best["prior"]),
            ("pipeline: upscale + SDXL VAE encode", best["upscale+encode"]),
            ("pipeline: inversion", best["inversion"]),
            (f"pipeline: guided sampler (fraction {args.fraction})", best["guided"]),
            ("pipeline total", pipeline_total)]
    for name, seconds in rows:
        print(f"| {name:<40} | {seconds:>9.2f} | {seconds / best['plain']:>8.3f} |")
    unit = "allocated" if cuda else "RSS"
    print(f"| {'peak memory plain (' + unit + ', MiB)':<40} | {mem_plain.peak / 2**20:>9.0f} | {1:>8.3f} |")
    print(f"| {'peak memory guided (' + unit + ', MiB)':<40} | {mem_guided.peak / 2**20:>9.0f} | {mem_ratio:>8.3f} |")
    print(f"lsregen: guided_step_time_ratio={step_ratio:.3f} pipeline_time_ratio={pipeline_ratio:.3f} "
          f"peak_mem_ratio={mem_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
