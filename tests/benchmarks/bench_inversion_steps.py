"""How many coarse inversion steps the LSReGen trajectory needs: the inverted latents at the guided sigmas (the first
ceil(0.1 x 30) sigmas of SDXL's 30-step schedule) for several `inversion_steps`, against a 40-step inversion, and
what each costs. Full-size SDXL UNet with seeded random weights (as bench_lsregen), a layout-like picture (two
coloured boxes on a gradient) encoded with the SDXL VAE. Prints a table and ends with
`inversion_steps: chosen=… max_rel_error=… model_evals=…`: the fewest steps whose latents stay within 2 % (relative
L2, against how far the 40-step inversion moved them from z0) at every guided sigma.

    .venv/bin/python tests/benchmarks/bench_inversion_steps.py [--size 256] [--steps 2,3,5,7,10,20]
"""

from __future__ import annotations

import argparse
import sys
import time

from bench_lsregen import MODELS, setup_paths

TOLERANCE = 0.02
REFERENCE_STEPS = 40


def layout_picture(size: int):
    import torch

    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    picture = torch.stack([0.3 + 0.4 * yy, 0.5 * xx, 0.6 - 0.3 * yy], -1)
    a, b = size // 6, size // 2
    picture[a:a + size * 2 // 5, a // 2:a // 2 + size * 2 // 5] = torch.tensor([0.9, 0.1, 0.1])
    picture[b - a // 2:size - a // 2, b + a // 2:size - a // 4] = torch.tensor([0.1, 0.6, 0.2])
    return picture[None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", default="2,3,5,7,10,20", help="coarse inversion steps to compare")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    setup_paths()
    torch.set_num_threads(args.threads)
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = not torch.cuda.is_available()
    comfy_args.use_pytorch_cross_attention = True
    import comfy.sd
    from regional_layout.guidance import comfy_inversion as I
    from regional_layout.guidance import comfy_sampling as S
    from regional_layout.guidance.trajectory import guided_steps
    from rl_devkit import full_size
    from support import graphs

    with torch.inference_mode():
        _, clip, vae = comfy.sd.load_checkpoint_guess_config(str(MODELS / "checkpoints" / graphs.SDXL),
                                                             output_model=False)[:3]
        sdxl = full_size.unet("SDXL", torch.bfloat16)
        empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        latent = {"samples": vae.encode(layout_picture(args.size))}
        guided = S.ksampler_sigmas(sdxl, 30, "euler", "normal", 1.0)[:guided_steps(30, 0.1)]

        def invert(steps: int):
            started = time.perf_counter()
            trajectory, _ = I.invert(sdxl, empty, latent, 30, "normal", 0.1, steps, "inversion", 0)
            at = [trajectory.at(float(s)) for s in guided]  # exact: the grid holds every guided sigma
            return at, trajectory.latents[0], len(trajectory.sigmas) - 1, time.perf_counter() - started

        reference, z0, ref_evals, ref_seconds = invert(REFERENCE_STEPS)
        rows = []
        for steps in sorted({int(s) for s in args.steps.split(",")}):
            at, _, evals, seconds = invert(steps)
            errors = [float((z - r).norm() / (r - z0).norm()) for z, r in zip(at, reference)]
            rows.append((steps, evals, seconds, errors))

    print(f"\nInversion steps: full-size SDXL (random weights), {args.size}x{args.size}, guided sigmas "
          f"{', '.join(f'{float(s):.2f}' for s in guided)}; reference: {REFERENCE_STEPS} coarse steps "
          f"({ref_evals} model evaluations, {ref_seconds:.1f} s)")
    print("| inversion_steps | model evaluations | seconds | relative error at each guided sigma |")
    print("|---|---|---|---|")
    for steps, evals, seconds, errors in rows:
        print(f"| {steps} | {evals} | {seconds:.1f} | {' / '.join(f'{e:.3f}' for e in errors)} |")
    good = [row for row in rows if max(row[3]) <= TOLERANCE]
    if not good:
        print(f"inversion_steps: chosen=none max_rel_error={min(max(r[3]) for r in rows):.3f} model_evals=0")
        return 1
    steps, evals, _, errors = good[0]
    print(f"inversion_steps: chosen={steps} max_rel_error={max(errors):.3f} model_evals={evals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
