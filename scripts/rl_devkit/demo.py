"""Run every shipped example workflow (workflows/api/*.json) through a real, headless ComfyUI.

With `--tiny` the random-weight test models stand in for the real ones (same file names), and each
workflow is shrunk (size, steps) so it finishes in minutes on a CPU; the pictures are meaningless but
every node of the pipeline runs. Without it, the workflows run as shipped on the weights in --models.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .server import ComfyServer, PromptRejected

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows" / "api"
TINY_MAX_SIDE = 256
TINY_MAX_STEPS = 4
# Test-only text encoders (tests/support/custom_nodes/rl_test_text_stand_ins) for those too big to write as tiny
# files, by CLIPLoader type: each is the family's real encoder class at the real width with 1 layer.
TEST_NODES = REPO / "tests" / "support" / "custom_nodes"
# Z-Image's template loads Qwen3 4B as CLIPLoader type lumina2 (ComfyUI picks the encoder from the file's keys).
TEXT_ENCODER_STAND_INS = {
    "qwen_image": "RLTest_QwenImageTextStandIn",
    "flux2": "RLTest_Flux2TextStandIn",
    "lumina2": "RLTest_ZImageTextStandIn",
}
# SD3.5's TripleCLIPLoader (CLIP-L, CLIP-G, T5-XXL) runs as ComfyUI's SD3 text encoder on the tiny CLIP-L alone: a
# CLIP-G is 32 layers at 1280 whatever its file holds, too slow on CPU (the conditioning keeps SD3's widths).
TRIPLE_CLIP_STAND_IN = {
    "class_type": "CLIPLoader",
    "inputs": {"clip_name": "clip_l.safetensors", "type": "sd3", "device": "default"},
}


def shrink_for_tiny_models(prompt: dict) -> dict:
    """Scale every node's width/height down to TINY_MAX_SIDE (aspect kept, multiples of 16) and cap steps."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node.get("inputs", {})
        width, height = inputs.get("width"), inputs.get("height")
        if isinstance(width, int) and isinstance(height, int) and max(width, height) > TINY_MAX_SIDE:
            scale = TINY_MAX_SIDE / max(width, height)
            inputs["width"] = max(16, round(width * scale / 16) * 16)
            inputs["height"] = max(16, round(height * scale / 16) * 16)
        for key in ("steps", "inversion_steps"):
            if isinstance(inputs.get(key), int):
                inputs[key] = min(inputs[key], TINY_MAX_STEPS)
    return prompt


def use_text_encoder_stand_ins(prompt: dict) -> dict:
    """Each CLIPLoader of a type in TEXT_ENCODER_STAND_INS replaced by its test-only stand-in node (the server
    must load TEST_NODES), and each TripleCLIPLoader by TRIPLE_CLIP_STAND_IN; the same outputs, so the rest of the
    workflow is unchanged."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        if node.get("class_type") == "CLIPLoader" and node["inputs"].get("type") in TEXT_ENCODER_STAND_INS:
            node.update(class_type=TEXT_ENCODER_STAND_INS[node["inputs"]["type"]], inputs={})
        elif node.get("class_type") == "TripleCLIPLoader":
            node.update(json.loads(json.dumps(TRIPLE_CLIP_STAND_IN)))
    return prompt


class ProgressPrinter:
    def __init__(self, prompt: dict):
        self.prompt = prompt
        self.last_node = None

    def __call__(self, event: dict) -> None:
        data = event.get("data", {})
        if event["type"] == "executing" and data.get("node") is not None:
            node = data["node"]
            title = self.prompt.get(node, {}).get("_meta", {}).get("title") or self.prompt.get(node, {}).get(
                "class_type"
            )
            print(f"    node {node}: {title}", flush=True)
        elif event["type"] == "progress":
            print(f"      step {data['value']}/{data['max']}", end="\r", flush=True)
        elif event["type"] == "execution_cached" and data.get("nodes"):
            print(f"    cached: {', '.join(data['nodes'])}", flush=True)


def run_workflow(server: ComfyServer, path: Path, out_dir: Path, tiny: bool) -> list[Path]:
    prompt = json.loads(path.read_text())
    if tiny:
        prompt = use_text_encoder_stand_ins(shrink_for_tiny_models(prompt))
    started = time.monotonic()
    result = server.run(prompt, timeout=3600, on_event=ProgressPrinter(prompt))
    if result.status != "success":
        raise RuntimeError(f"{path.name} ended with {result.status}: {json.dumps(result.error)[:1500]}")
    target = out_dir / path.stem
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for node_id, output in result.outputs.items():
        for image in output.get("images", []):
            if image.get("type") != "output":
                continue
            name = f"{node_id}_{image['filename']}"
            (target / name).write_bytes(server.view(image))
            written.append(target / name)
    print(f"  done in {time.monotonic() - started:.0f}s: {len(written)} image(s) in {target}", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", required=True, help="a ComfyUI models folder")
    parser.add_argument("--out", required=True, help="where the images go")
    parser.add_argument("--tiny", action="store_true", help="shrink the workflows for the tiny test models")
    parser.add_argument("--only", help="run only workflows whose file name contains this")
    args = parser.parse_args(argv)

    workflows = sorted(p for p in WORKFLOWS.glob("*.json") if not args.only or args.only in p.name)
    if not workflows:
        print(f"no workflows in {WORKFLOWS}", file=sys.stderr)
        return 1
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    comfyui = Path(os.environ["COMFYUI_PATH"])
    print(f"starting ComfyUI from {comfyui} with models from {args.models}", flush=True)
    server = ComfyServer(comfyui, REPO, Path(args.models), extra_custom_nodes=(TEST_NODES,) if args.tiny else ())
    server.start()
    failures = 0
    try:
        for path in workflows:
            print(f"workflow {path.name}", flush=True)
            try:
                run_workflow(server, path, out_dir, args.tiny)
            except (RuntimeError, PromptRejected) as err:
                failures += 1
                print(f"  FAILED: {err}", file=sys.stderr, flush=True)
    finally:
        server.stop()
        shutil.copy(server.log_path, out_dir / "comfyui.log")
        server.cleanup()
    print(f"{len(workflows) - failures} of {len(workflows)} workflows ran; images in {out_dir}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
