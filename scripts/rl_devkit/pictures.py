"""The README's editor picture, from the real frontend: the Region Layout node of the shipped example
`workflows/region_layout_preview.json` (ordinary prompts), as headless Chromium shows it.

Run through `python3 scripts/dev.py pictures`; tests never write into docs/.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .browser import Browser, chromium_available, quiet_settings, screenshot_node
from .server import ComfyServer

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "region_layout_preview.json"
EDITOR_NODE = "RL_RegionLayout"

LOAD = """
const app = window.comfyAPI.app.app;
await app.loadGraphData(args[0], true, true, args[1]);
const node = app.graph.nodes.find((n) => n.type === args[2]);
app.canvas.ds.scale = 1;
app.canvas.ds.offset = [340 - node.pos[0], 140 - node.pos[1]];  // clear of the side bar and the tabs
app.canvas.setDirty(true, true);
return String(node.id);
"""


def editor_picture(server: ComfyServer, out: Path) -> None:
    workflow = json.loads(WORKFLOW.read_text())
    editor = next(n for n in workflow["nodes"] if n["type"] == EDITOR_NODE)
    regions = len(json.loads(editor["widgets_values"][4])["regions"])
    quiet_settings(server)
    browser = Browser(server.url)
    try:
        browser.open_frontend()
        node_id = browser.js(LOAD, workflow, WORKFLOW.stem, EDITOR_NODE)
        browser.wait_for(f"document.querySelectorAll('.rl-row').length === {regions}", 30, "the editor's regions")
        browser.js("await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));")
        out.parent.mkdir(parents=True, exist_ok=True)
        screenshot_node(browser, node_id).save(out)
    finally:
        browser.close()
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "docs" / "images"), help="folder for the pictures")
    args = parser.parse_args()
    if not chromium_available():
        raise SystemExit("pictures need chromium and chromedriver: sudo apt-get install chromium chromium-driver")
    server = ComfyServer(Path(os.environ["COMFYUI_PATH"]), REPO).start()
    try:
        editor_picture(server, Path(args.out).resolve() / "region_editor.png")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
