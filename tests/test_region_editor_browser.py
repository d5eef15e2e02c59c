"""The region editor in real headless Chromium against the real ComfyUI server and frontend.

Draw two rectangles and a brush stroke with real mouse events, type prompts, queue from the UI's Run button,
and check the masks the backend made; reload the page; replay the same layout through the API; load every
shipped workflow.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rl_devkit.browser import Browser, chromium_available, quiet_settings, screenshot_node
from rl_devkit.demo import use_text_encoder_stand_ins
from rl_devkit.server import FINAL_EVENTS

pytestmark = [pytest.mark.browser, pytest.mark.server]

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 256, 192  # non-square on purpose
PROMPTS = ["a red barn", "a <b>white</b> horse", '<img src=x onerror="window.rlHacked=1"> a river']
# Drags in canvas pixels (from the canvas's top-left corner): two rectangles and one brush stroke.
RECTS = [((20, 20), (150, 110)), ((200, 130), (330, 230))]
STROKE = [(30, 200), (100, 205), (170, 210), (240, 215)]
BRUSH_PERCENT = 5
BASE_PROMPT = "a farm at golden hour"

SETUP_GRAPH = """
const app = window.comfyAPI.app.app;
app.graph.clear();
const add = (type, pos) => { const n = LiteGraph.createNode(type); n.pos = pos; app.graph.add(n); return n; };
const layout = add("RL_RegionLayout", [40, 60]);
layout.widgets.find((w) => w.name === "width").value = args[0];
layout.widgets.find((w) => w.name === "height").value = args[1];
const backdrop = add("EmptyImage", [520, 620]);
backdrop.widgets.find((w) => w.name === "color").value = 0x2060c0;
backdrop.connect(0, layout, layout.findInputSlot("backdrop"));
const toImage = add("MaskToImage", [520, 420]);
const save = add("SaveImage", [760, 420]);
layout.connect(1, toImage, 0);
toImage.connect(0, save, 0);
save.widgets.find((w) => w.name === "filename_prefix").value = "rl_browser";
app.canvas.ds.scale = 1;
app.canvas.ds.offset = [300, 80];
app.canvas.setDirty(true, true);
return {layout: String(layout.id), save: String(save.id)};
"""

STATE_OF = """
const node = window.comfyAPI.app.app.graph.nodes.find((n) => n.type === "RL_RegionLayout");
return node ? node.widgets.find((w) => w.name === "editor_state").value : null;
"""


def canvas_box(browser: Browser) -> dict:
    return browser.wait_for(
        "(() => { const r = document.querySelector('.rl-canvas')?.getBoundingClientRect();"
        " return r && r.width > 100 ? {x: r.x, y: r.y, w: r.width, h: r.height} : null; })()",
        30,
        "the editor canvas",
    )


def drag(browser: Browser, canvas, points) -> None:
    """Press at the first point (canvas pixels), move through the rest in small steps, release."""
    from selenium.webdriver.common.action_chains import ActionChains

    box = canvas.rect
    to_centre = lambda x, y: (int(x - box["width"] / 2), int(y - box["height"] / 2))  # noqa: E731
    chain = ActionChains(browser.driver, duration=10).move_to_element_with_offset(canvas, *to_centre(*points[0]))
    chain.click_and_hold()
    last = points[0]
    for point in points[1:]:
        for step in range(1, 5):
            x = last[0] + (point[0] - last[0]) * step / 4
            y = last[1] + (point[1] - last[1]) * step / 4
            chain.move_to_element_with_offset(canvas, *to_centre(x, y))
        last = point
    chain.release().perform()


def click(browser: Browser, css: str) -> None:
    browser.driver.find_element("css selector", css).click()


def type_prompt(browser: Browser, row: int, text: str) -> None:
    field = browser.driver.find_elements("css selector", ".rl-row .rl-prompt")[row]
    field.click()
    field.send_keys(text)


def wait_for_history(server, node_id: str, known: set[str], timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for prompt_id, entry in server.get_json("/history").items():
            if prompt_id in known:
                continue
            status = entry.get("status", {})
            if status.get("completed") or status.get("status_str") == "error":
                assert status.get("status_str") == "success", json.dumps(status)[:2000]
                return entry
        time.sleep(0.3)
    raise TimeoutError("the prompt queued from the UI did not finish")


def mask_images(server, entry: dict, node_id: str) -> list[np.ndarray]:
    images = entry["outputs"][node_id]["images"]
    return [np.asarray(Image.open(io.BytesIO(server.view(img))).convert("L")) > 127 for img in images]


@pytest.fixture(scope="module")
def browser(comfy_server):
    assert chromium_available(), (
        "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    )
    quiet_settings(comfy_server)
    b = Browser(comfy_server.url)
    try:
        b.open_frontend()
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def drawn(browser, comfy_server, artifacts):
    """Draw the layout with the mouse, type prompts, queue with the Run button; returns what happened."""
    ids = browser.js(SETUP_GRAPH, WIDTH, HEIGHT)
    canvas_box(browser)
    browser.wait_for(
        f"Math.abs(document.querySelector('.rl-canvas').width / "
        f"document.querySelector('.rl-canvas').height - {WIDTH / HEIGHT}) < 0.02",
        10,
        "aspect",
    )
    box = canvas_box(browser)
    canvas = browser.driver.find_element("css selector", ".rl-canvas")
    for i, (start, end) in enumerate(RECTS):
        click(browser, ".rl-add")
        drag(browser, canvas, [start, end])
        type_prompt(browser, i, PROMPTS[i])
    click(browser, ".rl-add")
    click(browser, ".rl-tool-brush")
    browser.driver.execute_script(
        "const s = document.querySelector('.rl-brush-size'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        str(BRUSH_PERCENT),
    )
    drag(browser, canvas, STROKE)
    type_prompt(browser, 2, PROMPTS[2])
    browser.driver.find_element("css selector", "textarea[placeholder='base_prompt']").send_keys(BASE_PROMPT)
    prompt = browser.js("return (await window.comfyAPI.app.app.graphToPrompt()).output;")
    screenshot_node(browser, ids["layout"]).save(artifacts / "region_editor.png")  # README: dev.py pictures
    known = set(comfy_server.get_json("/history"))
    browser.driver.find_element(
        "css selector", "[data-testid='queue-button'] button, button[data-testid='queue-button']"
    ).click()
    entry = wait_for_history(comfy_server, ids["save"], known)
    # After the run the backdrop (a blue EmptyImage) shows through where no region is.
    browser.wait_for(
        "(() => { const c = document.querySelector('.rl-canvas');"
        " const [r, g, b] = c.getContext('2d').getImageData(c.width - 5, 5, 1, 1).data;"
        " return Math.abs(r - 0x20) + Math.abs(g - 0x60) + Math.abs(b - 0xc0) < 12; })()",
        30,
        "the backdrop image in the editor",
    )
    browser.driver.save_screenshot(str(artifacts / "region_editor_after_run.png"))
    assert browser.toasts() == []  # no warning, alert or error while drawing and queueing
    return {
        "ids": ids,
        "box": box,
        "prompt": prompt,
        "entry": entry,
        "masks": mask_images(comfy_server, entry, ids["save"]),
    }


def test_prompt_holds_the_drawn_json(drawn, browser):
    inputs = drawn["prompt"][drawn["ids"]["layout"]]["inputs"]
    assert (inputs["width"], inputs["height"], inputs["base_prompt"]) == (WIDTH, HEIGHT, BASE_PROMPT)
    state = json.loads(inputs["editor_state"])
    assert state["version"] == 1
    assert [r["prompt"] for r in state["regions"]] == PROMPTS
    assert [[s["type"] for s in r["shapes"]] for r in state["regions"]] == [["rect"], ["rect"], ["stroke"]]
    w, h = drawn["box"]["w"], drawn["box"]["h"]
    for region, ((x0, y0), (x1, y1)) in zip(state["regions"], RECTS):
        rect = region["shapes"][0]
        assert rect["x"] * w == pytest.approx(x0, abs=2) and rect["y"] * h == pytest.approx(y0, abs=2)
        assert (rect["x"] + rect["w"]) * w == pytest.approx(x1, abs=2)
        assert (rect["y"] + rect["h"]) * h == pytest.approx(y1, abs=2)
    stroke = state["regions"][2]["shapes"][0]
    assert stroke["size"] == BRUSH_PERCENT / 100 and stroke["erase"] is False
    assert len(stroke["points"]) >= 4
    # Prompt text with HTML stays text: no element was made from it, no script ran.
    assert browser.driver.execute_script("return !window.rlHacked && !document.querySelector('.rl-list img')")
    assert "region_editor" not in inputs  # the canvas widget itself is not serialised


def test_queued_masks_match_the_drawing(drawn):
    masks = drawn["masks"]
    assert len(masks) == 3 and all(m.shape == (HEIGHT, WIDTH) for m in masks)
    w, h = drawn["box"]["w"], drawn["box"]["h"]
    expected = [abs(x1 - x0) * abs(y1 - y0) / (w * h) for (x0, y0), (x1, y1) in RECTS]
    diameter = BRUSH_PERCENT / 100 * w
    length = sum(math.dist(a, b) for a, b in zip(STROKE, STROKE[1:]))
    expected.append((length * diameter + math.pi * diameter**2 / 4) / (w * h))
    coverage = [float(m.mean()) for m in masks]
    assert coverage == pytest.approx(expected, abs=0.02), (coverage, expected)
    assert coverage[0] > 0.05 and coverage[2] > 0.02  # the comparison above is not vacuous


def test_layout_json_through_the_api_gives_the_same_masks(drawn, comfy_server):
    state = drawn["prompt"][drawn["ids"]["layout"]]["inputs"]["editor_state"]
    planner = json.dumps({**json.loads(state), "width": WIDTH, "height": HEIGHT})
    prompt = {
        "text": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": planner}},
        "layout": {
            "class_type": "RL_RegionLayout",
            "inputs": {
                "width": 64,
                "height": 64,
                "base_prompt": "",
                "background_prompt": "",
                "editor_state": '{"version": 1, "regions": []}',
                "layout_json": ["text", 0],
            },
        },
        "image": {"class_type": "MaskToImage", "inputs": {"mask": ["layout", 1]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["image", 0], "filename_prefix": "rl_api"}},
    }
    result = comfy_server.run(prompt)
    assert result.status == "success", result.error
    api_masks = [np.asarray(im.convert("L")) > 127 for im in comfy_server.images(result, "save")]
    assert len(api_masks) == len(drawn["masks"])
    for a, b in zip(api_masks, drawn["masks"]):
        assert np.array_equal(a, b)


def test_layout_survives_a_page_reload(drawn, browser):
    state = drawn["prompt"][drawn["ids"]["layout"]]["inputs"]["editor_state"]
    browser.wait_for(
        "Object.values(localStorage).concat(Object.values(sessionStorage)).some((v) => v.includes('a red barn'))",
        20,
        "the workflow to be persisted",
    )
    browser.open_frontend()
    browser.wait_for("document.querySelectorAll('.rl-row').length === 3", 60, "the editor after reload")
    assert browser.js(STATE_OF) == state
    assert browser.toasts() == []  # restoring the saved workflow raised no warning
    prompts = browser.driver.execute_script(
        "return [...document.querySelectorAll('.rl-row .rl-prompt')].map((t) => t.value)"
    )
    assert prompts == PROMPTS
    painted = browser.driver.execute_script(
        "const c = document.querySelector('.rl-canvas'); const x = c.getContext('2d');"
        "const [r, g, b] = x.getImageData(Math.round(c.width * 0.3), Math.round(c.height * 0.3), 1, 1).data;"
        "return [r, g, b];"
    )
    assert max(painted) - min(painted) > 30  # region 1 is drawn in colour over the grey checkerboard


def editor_state(browser: Browser, index: int = 0) -> dict:
    return json.loads(
        browser.js(
            """
        const nodes = window.comfyAPI.app.app.graph.nodes.filter((n) => n.type === "RL_RegionLayout");
        return nodes[args[0]].widgets.find((w) => w.name === "editor_state").value;
    """,
            index,
        )
    )


def row_button(browser: Browser, row: int, css: str, editor: int = 0) -> None:
    editors = browser.driver.find_elements("css selector", ".rl-editor")
    editors[editor].find_elements("css selector", ".rl-row")[row].find_element("css selector", css).click()


def graph_undo(browser: Browser) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    graph = browser.driver.find_element("css selector", "canvas#graph-canvas")
    corner = graph.rect
    chain = ActionChains(browser.driver).move_to_element_with_offset(
        graph, int(1000 - corner["x"] - corner["width"] / 2), int(300 - corner["y"] - corner["height"] / 2)
    )
    chain.click().key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()


def test_edit_tools_undo_and_region_list(drawn, browser):
    """Runs on the reloaded page: eraser, undo/redo, move/resize, reorder, hide, delete, aspect."""
    canvas = browser.driver.find_element("css selector", ".rl-canvas")
    w, h = canvas.rect["width"], canvas.rect["height"]
    row_button(browser, 0, ".rl-name")  # select region 1
    click(browser, ".rl-tool-erase")
    drag(browser, canvas, [(0, 65 * h / 298), (w - 1, 65 * h / 298)])
    shapes = editor_state(browser)["regions"][0]["shapes"]
    assert [s["type"] for s in shapes] == ["rect", "stroke"] and shapes[1]["erase"] is True
    click(browser, ".rl-undo")
    assert [s["type"] for s in editor_state(browser)["regions"][0]["shapes"]] == ["rect"]
    click(browser, ".rl-redo")
    assert editor_state(browser)["regions"][0]["shapes"] == shapes

    row_button(browser, 1, ".rl-name")  # region 2: move its rectangle, then drag its bottom-right corner
    click(browser, ".rl-tool-rect")
    before = editor_state(browser)["regions"][1]["shapes"][0]
    (x0, y0), (x1, y1) = [(x * w / drawn["box"]["w"], y * h / drawn["box"]["h"]) for x, y in RECTS[1]]
    drag(browser, canvas, [((x0 + x1) / 2, (y0 + y1) / 2), ((x0 + x1) / 2 - 40, (y0 + y1) / 2 - 20)])
    moved = editor_state(browser)["regions"][1]["shapes"]
    assert len(moved) == 1
    assert (moved[0]["x"] - before["x"]) * w == pytest.approx(-40, abs=2)
    assert (moved[0]["y"] - before["y"]) * h == pytest.approx(-20, abs=2)
    assert moved[0]["w"] == pytest.approx(before["w"], abs=1e-6)
    corner = ((moved[0]["x"] + moved[0]["w"]) * w, (moved[0]["y"] + moved[0]["h"]) * h)
    drag(browser, canvas, [corner, (corner[0] + 30, corner[1] + 15)])
    resized = editor_state(browser)["regions"][1]["shapes"][0]
    assert (resized["x"], resized["y"]) == pytest.approx((moved[0]["x"], moved[0]["y"]), abs=1e-6)
    assert (resized["w"] - moved[0]["w"]) * w == pytest.approx(30, abs=2)

    row_button(browser, 0, ".rl-down")
    assert [r["prompt"] for r in editor_state(browser)["regions"]] == [PROMPTS[1], PROMPTS[0], PROMPTS[2]]
    click(browser, ".rl-undo")
    row_button(browser, 0, ".rl-hide")
    assert editor_state(browser)["regions"][0]["hidden"] is True
    row_button(browser, 2, ".rl-delete")
    assert [r["prompt"] for r in editor_state(browser)["regions"]] == PROMPTS[:2]
    assert len(browser.driver.find_elements("css selector", ".rl-row")) == 2
    click(browser, ".rl-undo")
    assert [r["prompt"] for r in editor_state(browser)["regions"]] == PROMPTS

    # Graph undo (Ctrl+Z on the graph canvas) also takes back an edit made in the editor.
    click(browser, ".rl-add")
    assert len(editor_state(browser)["regions"]) == 4
    graph_undo(browser)
    browser.wait_for("document.querySelectorAll('.rl-row').length === 3", 20, "graph undo of the added region")
    assert [r["prompt"] for r in editor_state(browser)["regions"]] == PROMPTS

    browser.js("""
        const app = window.comfyAPI.app.app;
        const node = app.graph.nodes.find((n) => n.type === "RL_RegionLayout");
        node.widgets.find((w) => w.name === "width").value = 128;
        node.widgets.find((w) => w.name === "height").value = 256;
        app.canvas.setDirty(true, true);
    """)
    browser.wait_for(
        "(() => { const c = document.querySelector('.rl-canvas'); "
        "return Math.abs(c.width / c.height - 0.5) < 0.02; })()",
        10,
        "the canvas to follow the aspect",
    )
    height = browser.driver.execute_script("return document.querySelector('.rl-canvas').height")
    browser.js("""
        const app = window.comfyAPI.app.app;
        const node = app.graph.nodes.find((n) => n.type === "RL_RegionLayout");
        node.setSize([node.size[0] + 200, node.size[1] + 200]);
        app.canvas.setDirty(true, true);
    """)
    browser.wait_for(f"document.querySelector('.rl-canvas').height > {height} + 100", 10, "the canvas to grow")
    assert len(editor_state(browser)["regions"]) == 3  # resizing the node leaves the layout alone


def test_copy_paste_gives_an_independent_editor(drawn, browser):
    browser.js("""
        const app = window.comfyAPI.app.app;
        const node = app.graph.nodes.find((n) => n.type === "RL_RegionLayout");
        app.canvas.selectItems([node]);
        app.canvas.copyToClipboard();
        app.canvas.graph_mouse = [node.pos[0] + 480, node.pos[1]];
        app.canvas.pasteFromClipboard();
        app.canvas.setDirty(true, true);
    """)
    browser.wait_for("document.querySelectorAll('.rl-editor').length === 2", 20, "the pasted editor")
    original = editor_state(browser, 0)
    assert editor_state(browser, 1) == original
    browser.wait_for(
        "document.querySelectorAll('.rl-editor')[1].querySelectorAll('.rl-row').length === 3",
        10,
        "the pasted editor's region list",
    )
    browser.driver.find_elements("css selector", ".rl-editor")[1].find_element("css selector", ".rl-add").click()
    assert len(editor_state(browser, 1)["regions"]) == 4
    assert editor_state(browser, 0) == original


def test_editor_follows_the_light_theme(drawn, browser, artifacts):
    set_palette = "await window.comfyAPI.app.app.extensionManager.setting.set('Comfy.ColorPalette', args[0]);"
    field = "getComputedStyle(document.querySelector('.rl-row .rl-prompt'))"
    browser.js(set_palette, "light")
    try:
        browser.wait_for(f"{field}.backgroundColor === 'rgb(201, 201, 201)'", 20, "light input background")
        assert browser.driver.execute_script(f"return {field}.color") == "rgb(34, 34, 34)"
        browser.driver.save_screenshot(str(artifacts / "region_editor_light.png"))
    finally:
        browser.js(set_palette, "dark")
    browser.wait_for(f"{field}.color === 'rgb(221, 221, 221)'", 20, "dark theme again")


def accepted_then_stopped(server, prompt: dict) -> None:
    """Queue `prompt` (raises PromptRejected when validation refuses it), then interrupt it: only acceptance
    is under test here, the workflows' full-size runs are too slow for CI (their API twins run shrunk)."""
    prompt_id = server.queue(prompt)
    deadline = time.monotonic() + 300
    while not any(e["type"] in FINAL_EVENTS for e in server.events_for(prompt_id)):
        assert time.monotonic() < deadline, f"prompt {prompt_id} neither finished nor stopped"
        server.interrupt()  # an interrupt before the prompt starts is dropped, so repeat it
        time.sleep(0.5)
    result = server.wait(prompt_id, 10)
    assert result.status in ("success", "interrupted"), result.error


def test_shipped_workflows_load_without_missing_nodes_errors_or_toasts(browser, comfy_server):
    workflows = sorted((REPO / "workflows").glob("*.json"))
    assert workflows, "no shipped workflows"
    for path in workflows:
        before, toasts_before = len(browser.read_console()), len(browser.toasts())
        loaded = browser.js(
            """
            const app = window.comfyAPI.app.app;
            await app.loadGraphData(args[0], true, true, args[1]);
            await new Promise((r) => setTimeout(r, 500));
            const missing = app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type);
            return {missing, prompt: (await app.graphToPrompt()).output};
        """,
            json.loads(path.read_text()),
            path.stem,
        )
        assert loaded["missing"] == [], f"{path.name}: missing nodes {loaded['missing']}"
        errors = [
            e["message"]
            for e in browser.read_console()[before:]
            if e.get("level") == "SEVERE" and "Failed to load resource" not in e["message"]
        ]
        assert errors == [], f"{path.name}: console errors {errors}"
        # Any toast (warning, alert, error) means the frontend found fault with the file, e.g. its zod schema.
        assert browser.toasts()[toasts_before:] == [], f"{path.name}: toasts {browser.toasts()[toasts_before:]}"
        # Text encoders too big for tiny files (Qwen-Image's Qwen2.5-VL 7B) are queued as their test-only stand-ins.
        accepted_then_stopped(comfy_server, use_text_encoder_stand_ins(loaded["prompt"]))
        comfy_server.free()  # a loader that ran before the interrupt (FLUX.2's: 9 GB on CPU) lets go of its model
