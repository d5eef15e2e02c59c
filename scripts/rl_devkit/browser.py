"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium against the real ComfyUI frontend."""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1400,1000",
    "--force-device-scale-factor=1",
)
# Settings that keep first-run dialogs (template browser, tours) out of the way.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True}
# Records the text of every toast (PrimeVue's `.p-toast-message`: the frontend's warnings, alerts and errors,
# e.g. "Invalid workflow against zod schema") into window.rlToasts, even ones that vanish again.
TOAST_RECORDER = """
if (!window.rlToasts) {
  window.rlToasts = [];
  const seen = new WeakSet();
  const record = (el) => {
    if (seen.has(el)) return;
    seen.add(el);
    const kind = [...el.classList].find((c) => /^p-toast-message-(?!content|icon|text)/.test(c)) || "";
    window.rlToasts.push(`${kind.replace("p-toast-message-", "")}: ${el.textContent.trim().slice(0, 500)}`);
  };
  const scan = () => document.querySelectorAll(".p-toast-message").forEach(record);
  new MutationObserver(scan).observe(document.body, {childList: true, subtree: true});
  scan();
}
"""


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


class Browser:
    """One Chromium with a fresh profile; `js(...)` runs an async-capable snippet in the page."""

    def __init__(self, base_url: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base_url = base_url
        self.profile = tempfile.mkdtemp(prefix="rl-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_script_timeout(60)
        self.console: list[dict] = []

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def wait_for(self, script: str, timeout: float = 60.0, message: str = ""):
        """Poll a JS expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.driver.execute_script(f"return ({script});")
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {message or script}; console: {self.read_console()[-10:]}")
            time.sleep(0.1)

    def js(self, body: str, *args):
        """Run `body` as an async function (arguments[0..]); returns its JSON-serialisable result."""
        wrapper = ("const done = arguments[arguments.length - 1];"
                   f"(async (...args) => {{ {body} }})(...Array.from(arguments).slice(0, -1))"
                   ".then((v) => done({ok: v}), (e) => done({error: String(e && e.stack || e)}));")
        result = self.driver.execute_async_script(wrapper, *args)
        if "error" in result:
            raise RuntimeError(result["error"])
        return result.get("ok")

    def open_frontend(self, timeout: float = 90.0) -> None:
        self.driver.get(self.base_url)
        self.wait_for("window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types?.KSampler "
                      "&& document.querySelector('.graph-canvas-container, canvas#graph-canvas')",
                      timeout, "the ComfyUI frontend to load")
        self.driver.execute_script(TOAST_RECORDER)

    def toasts(self) -> list[str]:
        """Every toast shown since the page loaded ("severity: text")."""
        return self.driver.execute_script("return window.rlToasts || [];")

    def read_console(self) -> list[dict]:
        self.console += self.driver.get_log("browser")
        return self.console

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.read_console() if e.get("level") == "SEVERE"]


def quiet_settings(server) -> None:
    for key, value in QUIET_SETTINGS.items():
        server.request(f"/settings/{key}", value)


def screenshot_node(browser: Browser, node_id: str):
    """A PIL image of one node of the graph as the page shows it (8 pixels of margin)."""
    from PIL import Image

    box = browser.js("""
        const app = window.comfyAPI.app.app;
        const node = app.graph.getNodeById(Number(args[0]));
        const r = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds;
        const x = r.left + (node.pos[0] + ds.offset[0]) * ds.scale, y = r.top + (node.pos[1] + ds.offset[1]) * ds.scale;
        return [x - 8, y - LiteGraph.NODE_TITLE_HEIGHT - 8, x + node.size[0] * ds.scale + 8,
                y + node.size[1] * ds.scale + 8];
    """, node_id)
    shot = Image.open(io.BytesIO(browser.driver.get_screenshot_as_png())).convert("RGB")
    return shot.crop(tuple(int(v) for v in box))
