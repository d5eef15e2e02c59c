"""Start, drive and stop a real ComfyUI server on 127.0.0.1 (used by the tests and the demo).

Prompts go in through `POST /prompt`, progress comes back over the websocket, results through
`/history` and `/view`. The server's log is kept so tests can look for tracebacks.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import websocket  # websocket-client

from .host import PACK_LINK_NAME, pack_is_installed

MODEL_FOLDERS = {
    "checkpoints": "checkpoints",
    "diffusion_models": "diffusion_models",
    "text_encoders": "text_encoders",
    "vae": "vae",
    "gligen": "gligen",
    "loras": "loras",
    "controlnet": "controlnet",
}
DEFAULT_FLAGS = (
    "--cpu",
    # Both are ordinary ComfyUI flags; on CPU they make the tiny models several times faster.
    "--use-pytorch-cross-attention",
    "--disable-auto-launch",
)
FINAL_EVENTS = {"execution_success", "execution_error", "execution_interrupted"}
# ComfyUI's own optional audio nodes fail to import without torchaudio (a user's choice); that is not our concern.
EXPECTED_IMPORT_FAILURES = ("nodes_audio.py", "nodes_audio_encoder.py")
# A host bug, not ours: ComfyUI 0.3.x's app/database/db.py init_db() never closes its migration connection (v0.30
# does), so whenever the garbage collector frees it in the prompt worker thread, SQLAlchemy logs sqlite3's
# "created in a thread ... used in that same thread" error from its pool finalizer. When that happens is the GC's
# timing (with torch 2.11 it happens in the soak).
HOST_TRACEBACKS = (("sqlalchemy/pool/base.py", "SQLite objects created in a thread can only be used in that same"),)


def _expected_host_traceback(block: str) -> bool:
    if any(f"comfy_extras/{name}" in block for name in EXPECTED_IMPORT_FAILURES):
        return True
    flat = " ".join(block.split())  # the log may wrap long lines
    return any(all(part in flat for part in bug) for bug in HOST_TRACEBACKS)


class PromptRejected(RuntimeError):
    """ComfyUI refused the prompt at validation (HTTP 400)."""

    def __init__(self, payload: dict):
        self.payload = payload
        super().__init__(json.dumps(payload)[:2000])

    @property
    def node_errors(self) -> dict:
        return self.payload.get("node_errors", {})

    def text(self) -> str:
        return json.dumps(self.payload)


@dataclass
class PromptResult:
    prompt_id: str
    status: str  # "success", "error" or "interrupted"
    outputs: dict
    events: list[dict] = field(default_factory=list)
    # Outputs that failed validation while others still ran (ComfyUI then answers 200 and runs the rest).
    node_errors: dict = field(default_factory=dict)

    def event_data(self, kind: str) -> list[dict]:
        return [e["data"] for e in self.events if e["type"] == kind]

    @property
    def executed_nodes(self) -> list[str]:
        return [d["node"] for d in self.event_data("executing") if d.get("node") is not None]

    @property
    def cached_nodes(self) -> list[str]:
        return [n for d in self.event_data("execution_cached") for n in d.get("nodes", [])]

    @property
    def error(self) -> dict | None:
        errors = self.event_data("execution_error")
        return errors[0] if errors else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """One `main.py` process with this pack loaded and models from `models_dir`."""

    def __init__(
        self,
        comfyui: Path,
        pack_root: Path,
        models_dir: Path | None = None,
        *,
        python: str | None = None,
        extra_flags: tuple[str, ...] = (),
        run_dir: Path | None = None,
        port: int | None = None,
        extra_custom_nodes: tuple[Path, ...] = (),
        extra_model_dirs: dict[str, tuple[Path, ...]] | None = None,
    ):
        self.comfyui = Path(comfyui)
        self.pack_root = Path(pack_root)
        self.models_dir = Path(models_dir) if models_dir else None
        self.python = python or sys.executable
        self.flags = DEFAULT_FLAGS + tuple(extra_flags)
        self.extra_custom_nodes = tuple(Path(p) for p in extra_custom_nodes)  # folders holding other packs
        # more folders per model kind (e.g. a test's own LoRA files), searched after models_dir's
        self.extra_model_dirs = {k: tuple(Path(p) for p in v) for k, v in (extra_model_dirs or {}).items()}
        self._owns_run_dir = run_dir is None
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="rl-comfy-"))
        self.port = port or free_port()
        self.client_id = uuid.uuid4().hex
        self.process: subprocess.Popen | None = None
        self._events: list[dict] = []
        self._events_lock = threading.Condition()
        self._ws: websocket.WebSocket | None = None
        self._ws_thread: threading.Thread | None = None
        self._owns_process = True
        self._node_errors: dict[str, dict] = {}

    # ----- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "server.log"

    @property
    def output_dir(self) -> Path:
        return self.run_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.run_dir / "input"

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        for sub in ("output", "input", "temp", "user"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        cmd = [
            self.python,
            "main.py",
            *self.flags,
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--output-directory",
            str(self.output_dir),
            "--input-directory",
            str(self.input_dir),
            "--temp-directory",
            str(self.run_dir / "temp"),
            "--user-directory",
            str(self.run_dir / "user"),
            "--database-url",
            "sqlite:///:memory:",
        ]
        config = self._write_extra_paths()
        if config:
            cmd += ["--extra-model-paths-config", str(config)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            cmd, cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_ready(timeout)
        self._connect_websocket()
        return self

    def _write_extra_paths(self) -> Path | None:
        entries = {}
        if self.models_dir:
            entries.update({key: str(self.models_dir / sub) for key, sub in MODEL_FOLDERS.items()})
            entries["clip"] = str(self.models_dir / "text_encoders")
        for key, dirs in self.extra_model_dirs.items():  # ComfyUI splits a value into paths by lines
            entries[key] = "\n".join(([entries[key]] if key in entries else []) + [str(d) for d in dirs])
        node_dirs = [str(p) for p in self.extra_custom_nodes]
        if not pack_is_installed(self.comfyui, self.pack_root):
            nodes_dir = self.run_dir / "custom_nodes"
            nodes_dir.mkdir(exist_ok=True)
            link = nodes_dir / PACK_LINK_NAME
            if not link.exists():
                link.symlink_to(self.pack_root.resolve(), target_is_directory=True)
            node_dirs.append(str(nodes_dir))
        if node_dirs:
            entries["custom_nodes"] = "\n".join(node_dirs)  # ComfyUI splits a value into paths by lines
        if not entries:
            return None
        lines = ["rl_test_models:"] + [f"    {key}: {json.dumps(value)}" for key, value in entries.items()]
        path = self.run_dir / "extra_model_paths.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} during start:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return
            except (OSError, ValueError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def _connect_websocket(self) -> None:
        self._ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=10)
        self._ws.settimeout(None)
        self._ws_thread = threading.Thread(target=self._read_websocket, daemon=True)
        self._ws_thread.start()

    def _read_websocket(self) -> None:
        while True:
            try:
                message = self._ws.recv()
            except Exception:  # closed or server gone: stop reading
                return
            if not message:  # the connection closed
                return
            if isinstance(message, bytes):  # binary frames carry previews
                event = {"type": "preview", "data": {"bytes": len(message)}}
            else:
                event = json.loads(message)
            with self._events_lock:
                self._events.append(event)
                self._events_lock.notify_all()

    def new_client(self) -> "ComfyServer":
        """Another client of this running server: its own client id and websocket, sharing the process
        (stopping it only closes its websocket)."""
        client = ComfyServer(self.comfyui, self.pack_root, self.models_dir, run_dir=self.run_dir, port=self.port)
        client.process, client._owns_process, client._owns_run_dir = self.process, False, False
        client._connect_websocket()
        return client

    def stop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None
        if self._owns_process and self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)

    def cleanup(self) -> None:
        """Stop, then delete the temporary run folder (outputs, log) if this object made it."""
        self.stop()
        if self._owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc; 0 where that is not available)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except (OSError, AttributeError):
            return 0
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(match.group(1)) * 1024 if match else 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- HTTP ------------------------------------------------------------------------------
    def request(self, path: str, body: dict | None = None, timeout: float = 60) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read()

    def get_json(self, path: str, timeout: float = 60):
        return json.loads(self.request(path, timeout=timeout))

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(
        self,
        prompt: dict,
        *,
        prompt_id: str | None = None,
        extra_data: dict | None = None,
        client_id: str | None = None,
    ) -> str:
        body = {"prompt": prompt, "client_id": client_id or self.client_id, "prompt_id": prompt_id or str(uuid.uuid4())}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            answer = json.loads(self.request("/prompt", body))
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                raise PromptRejected(json.loads(payload)) from None
            except ValueError:
                raise PromptRejected({"error": payload.decode(errors="replace")}) from None
        self._node_errors[answer["prompt_id"]] = answer.get("node_errors") or {}
        return answer["prompt_id"]

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.request("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.request("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def history(self, prompt_id: str) -> dict:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.request(f"/view?{query}")

    # ----- prompts ---------------------------------------------------------------------------
    def events_for(self, prompt_id: str) -> list[dict]:
        with self._events_lock:
            return [e for e in self._events if e.get("data", {}).get("prompt_id") == prompt_id]

    def wait(self, prompt_id: str, timeout: float = 900.0, on_event=None) -> PromptResult:
        """Block until `prompt_id` finishes (success, error or interrupt); raise if the server dies.
        `on_event(event)` sees each of the prompt's websocket events as it arrives."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._events_lock:
            while True:
                mine = [e for e in self._events if e.get("data", {}).get("prompt_id") == prompt_id]
                if on_event is not None:
                    for event in mine[seen:]:
                        on_event(event)
                    seen = len(mine)
                final = [e for e in mine if e["type"] in FINAL_EVENTS]
                if final:
                    break
                if not self.alive:
                    raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f}s")
                self._events_lock.wait(1.0)
        status = final[0]["type"].removeprefix("execution_")
        outputs = self._history_outputs(prompt_id) if status == "success" else {}
        return PromptResult(
            prompt_id, status, outputs, self.events_for(prompt_id), self._node_errors.get(prompt_id, {})
        )

    def _history_outputs(self, prompt_id: str) -> dict:
        # The history entry is written just after the final websocket event.
        for _ in range(50):
            entry = self.history(prompt_id)
            if entry:
                return entry.get("outputs", {})
            time.sleep(0.1)
        return {}

    def run(self, prompt: dict, timeout: float = 900.0, on_event=None, **queue_kwargs) -> PromptResult:
        return self.wait(self.queue(prompt, **queue_kwargs), timeout, on_event)

    def images(self, result: PromptResult, node_id: str):
        """The images a SaveImage/PreviewImage node produced, as PIL images."""
        from PIL import Image

        return [Image.open(io.BytesIO(self.view(img))) for img in result.outputs.get(node_id, {}).get("images", [])]

    # ----- log -------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def tracebacks(self, since: int = 0) -> list[str]:
        """Traceback blocks in the server log after character offset `since`."""
        text = self.log_text()[since:]
        blocks = re.findall(r"Traceback \(most recent call last\):\n(?:[ \t].*\n|\S.*Error.*\n?)+", text)
        return [b for b in blocks if not _expected_host_traceback(b)]

    def import_failures(self) -> list[str]:
        failed = re.findall(r"IMPORT FAILED: (.*)", self.log_text())
        failed += re.findall(r"Cannot import (.*) module for custom nodes", self.log_text())
        failed += re.findall(r"Error while calling comfy_entrypoint in (.*)", self.log_text())
        return [f for f in failed if not f.strip().endswith(EXPECTED_IMPORT_FAILURES)]
