"""LSReGen speed and memory, in one process: plain SDXL KSampler against the backward-guided sampler at the same
size and steps, and the whole pipeline (GLIGEN prior + decode + upscale + SDXL VAE encode + inversion + guided
sampling) against plain SDXL sampling. Prints a table and ends with
`lsregen: guided_step_time_ratio=… pipeline_time_ratio=… peak_mem_ratio=…`.

By default the SDXL and SD1.5 UNets and the GLIGEN model are the real architectures at full size with seeded random
weights (built in memory, loaded by ComfyUI's own loaders), in bfloat16; text encoders and VAEs come from the tiny
checkpoints, which keep them at full size. Steps are the nodes' defaults (SDXL 30, prior 20, inversion 10); only
the picture is smaller on CPU (256², prior 128²) than on CUDA (1024², prior 512²). `--unets files` takes the UNets
from the checkpoints in RL_MODELS_DIR instead (the tiny ones: fast, but their shrunken UNets make the VAE and the
prior look several times dearer next to SDXL than they are).

    .venv/bin/python tests/benchmarks/bench_lsregen.py [--size 256] [--steps 30] [--repeats 2] [--threads 2]
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
    for path in (str(link_dir), str(REPO / "tests"), str(REPO / "scripts"), str(COMFYUI)):
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
    import torch

    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return run()


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, help="SDXL width and height (CPU 256, CUDA 1024)")
    parser.add_argument("--prior-size", type=int, help="GLIGEN prior size (CPU 128, CUDA 512)")
    parser.add_argument("--steps", type=int, default=30, help="SDXL steps (the sampler node's default)")
    parser.add_argument("--prior-steps", type=int, default=20, help="GLIGEN prior steps (the prior node's default)")
    parser.add_argument("--inversion-steps", type=int, default=5,
                        help="coarse inversion steps (the inversion node's default)")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--unets", choices=("full", "files"), default="full",
                        help="full: full-size random-weight UNets and GLIGEN; files: those of the checkpoints")
    parser.add_argument("--repeats", type=int, default=2, help="timed pipelines, each between two plain runs")
    parser.add_argument("--step-pairs", type=int, default=4,
                        help="guided runs (every step guided) for the step ratio, each between two plain runs")
    parser.add_argument("--pair-steps", type=int, default=6, help="steps of those runs (the ratio is per step)")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of the peak-memory runs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    args.size = args.size or (1024 if cuda else 256)
    args.prior_size = args.prior_size or args.size // 2

    setup_paths()
    torch.set_num_threads(args.threads)
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = not cuda
    comfy_args.use_pytorch_cross_attention = True
    import comfy.sd
    import comfy.utils
    from regional_layout.guidance import comfy_inversion as I
    from regional_layout.guidance import comfy_sampling as S
    from regional_layout.guidance.backward import GuidanceSettings
    from regional_layout.guidance.comfy_gligen import sample_prior
    from regional_layout.layout.boxes import parse_boxes
    from support import graphs

    def load(name):
        return comfy.sd.load_checkpoint_guess_config(str(MODELS / "checkpoints" / name), output_vae=True,
                                                     output_clip=True, embedding_directory=None,
                                                     output_model=args.unets == "files")[:3]

    sdxl, sdxl_clip, sdxl_vae = load(graphs.SDXL)
    sd15, sd15_clip, sd15_vae = load(graphs.SD15)
    if args.unets == "full":
        from rl_devkit import full_size

        sdxl, sd15 = full_size.unet("SDXL", torch.bfloat16), full_size.unet("SD15", torch.bfloat16)
        gligen = full_size.gligen()
    else:
        gligen = comfy.sd.load_gligen(str(MODELS / "gligen" / graphs.GLIGEN))
    positive = sdxl_clip.encode_from_tokens_scheduled(sdxl_clip.tokenize("a red car beside an oak tree"))
    negative = sdxl_clip.encode_from_tokens_scheduled(sdxl_clip.tokenize("blurry"))
    empty = sdxl_clip.encode_from_tokens_scheduled(sdxl_clip.tokenize(""))
    boxes = parse_boxes("0.05 0.3 0.4 0.5: a red car\n0.5 0.05 0.45 0.9: an oak tree")
    size, steps = args.size, args.steps
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}

    def plain(steps=steps):
        return S.sample(sdxl, 0, steps, 7.0, "euler", "normal", positive, negative, latent)

    def guided(trajectory, fraction, steps=steps):
        plan = S.GuidancePlan(trajectory, GuidanceSettings(0.2), fraction)
        return S.sample(sdxl, 0, steps, 7.0, "euler", "normal", positive, negative, latent, plan=plan)

    def pipeline(prior_steps=args.prior_steps, inversion_steps=args.inversion_steps, steps=steps):
        times = {}
        (image, _), times["prior"] = timed(lambda: sample_prior(
            sd15, sd15_clip, sd15_vae, gligen, boxes, "a country road", "", 0, prior_steps, 7.5, "euler",
            "normal", args.prior_size, args.prior_size), cuda)
        encoded, times["upscale+encode"] = timed(lambda: {"samples": sdxl_vae.encode(comfy.utils.common_upscale(
            image.movedim(-1, 1), size, size, "bicubic", "disabled").movedim(1, -1)[..., :3])}, cuda)
        (trajectory, _), times["inversion"] = timed(lambda: I.invert(
            sdxl, empty, encoded, args.steps, "normal", args.fraction, inversion_steps, "inversion", 0), cuda)
        _, times["guided"] = timed(lambda: guided(trajectory, args.fraction, steps), cuda)
        return trajectory, times

    def paired(run, count: int, plain_steps: int) -> tuple[list[float], list[float], list[float], list]:
        """`count` runs of `run() -> (result, seconds)`, each between two plain runs: (their seconds, their ratios
        to the mean of the plain runs on either side, the plain runs' seconds, their results). Load changes on a
        shared machine cancel."""
        seconds, ratios, plains, results = [], [], [], []
        _, before = timed(lambda: plain(plain_steps), cuda)
        plains.append(before)
        for _ in range(count):
            result, t = run()
            _, after = timed(lambda: plain(plain_steps), cuda)
            seconds.append(t)
            ratios.append(t / ((before + after) / 2))
            plains.append(after)
            results.append(result)
            before = after
        return seconds, ratios, plains, results

    def timed_pipeline():
        _, parts = pipeline()
        return parts, sum(parts.values())

    # warm-up with few steps: model loading and first-call costs stay out of the numbers
    plain(2)
    trajectory, _ = pipeline(prior_steps=1, inversion_steps=1, steps=2)
    # the guided step: every step guided, against plain sampling with the same steps
    guided_s, step_ratios, step_plains, _ = paired(
        lambda: timed(lambda: guided(trajectory, 1.0, args.pair_steps), cuda), args.step_pairs, args.pair_steps)
    # the whole pipeline against plain sampling
    pipe_s, pipeline_ratios, plains, runs = paired(timed_pipeline, args.repeats, steps)
    parts = {k: min(r[k] for r in runs) for k in runs[0]}
    # peak memory does not grow with the step count: a few steps each (the trajectory is aligned to them)
    with PeakMemory(cuda) as mem_plain:
        plain(args.memory_steps)
    with PeakMemory(cuda) as mem_guided:
        guided(trajectory, 1.0, args.memory_steps)

    step_ratio = statistics.median(step_ratios)
    pipeline_ratio = statistics.median(pipeline_ratios)
    mem_ratio = mem_guided.peak / mem_plain.peak
    plain_s = min(plains)
    device = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} threads"
    print(f"\nLSReGen benchmark: {device}; SDXL {size}x{size}, {steps} steps euler/normal cfg 7; prior "
          f"{args.prior_size}x{args.prior_size}, {args.prior_steps} steps; inversion {args.inversion_steps} coarse "
          f"steps + ceil({args.fraction}x{steps}) guided sigmas; UNets: {args.unets}, models from {MODELS}")
    print(f"(seconds: the fastest run; the ratios are medians over runs, each against the mean of the plain runs "
          f"just before and after it: {args.repeats} pipelines, {args.step_pairs} guided runs of {args.pair_steps} "
          "steps)")
    print(f"| {'measure':<44} | {'seconds':>9} | {'x plain':>8} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 10}|")
    rows = [(f"plain SDXL KSampler, {steps} steps", plain_s, 1.0),
            ("pipeline: GLIGEN prior (+decode)", parts["prior"], None),
            ("pipeline: upscale + SDXL VAE encode", parts["upscale+encode"], None),
            ("pipeline: inversion", parts["inversion"], None),
            (f"pipeline: guided sampler (fraction {args.fraction})", parts["guided"], None),
            ("pipeline total (median ratio)", min(pipe_s), pipeline_ratio),
            (f"plain SDXL KSampler, {args.pair_steps} steps", min(step_plains), 1.0),
            (f"guided, all {args.pair_steps} steps guided (median ratio)", min(guided_s), step_ratio)]
    for name, seconds, ratio in rows:
        ratio = seconds / plain_s if ratio is None else ratio
        print(f"| {name:<44} | {seconds:>9.2f} | {ratio:>8.3f} |")
    unit = "allocated" if cuda else "RSS"
    print(f"| {'peak memory plain (' + unit + ', MiB)':<44} | {mem_plain.peak / 2**20:>9.0f} | {1:>8.3f} |")
    print(f"| {'peak memory guided (' + unit + ', MiB)':<44} | {mem_guided.peak / 2**20:>9.0f} | {mem_ratio:>8.3f} |")
    print(f"lsregen: guided_step_time_ratio={step_ratio:.3f} pipeline_time_ratio={pipeline_ratio:.3f} "
          f"peak_mem_ratio={mem_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
