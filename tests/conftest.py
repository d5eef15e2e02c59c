"""Shared fixtures: the real ComfyUI host (imported in-process for unit tests, or served on 127.0.0.1 for
integration tests), the tiny models, and this pack imported as the package `regional_layout`.

Tests marked `pure` need only torch, numpy and pillow: `python3 -m pytest -m pure` runs them without any ComfyUI.
Every other test needs the host, and asks for it through the `comfyui` fixture (directly or through the fixtures
below).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("COMFYUI_PATH", REPO / ".comfyui")).resolve()
MODELS = Path(os.environ.get("RL_MODELS_DIR", REPO / ".cache" / "tiny_models")).resolve()
ARTIFACTS = REPO / "test-artifacts"
HAS_HOST = (COMFYUI / "main.py").exists()
NO_HOST = f"No ComfyUI at {COMFYUI}: run `python3 scripts/dev.py test`, or set COMFYUI_PATH"
PURE_MARK = "mark.pure"  # how a test file says it holds pure tests


def _import_paths() -> None:
    """ComfyUI first (its `nodes` module must win), then our devkit, then the pack under a stable name."""
    link_dir = REPO / ".cache" / "import"
    link = link_dir / "regional_layout"
    link_dir.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(REPO, target_is_directory=True)
    # `python -m pytest` puts the repo root first, where our `nodes/` would shadow ComfyUI's `nodes` module:
    # move ComfyUI (and our helpers) to the very front even when PYTHONPATH already lists them.
    for path in (str(link_dir), str(REPO / "tests"), str(REPO / "scripts"), *([str(COMFYUI)] if HAS_HOST else [])):
        while path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


def _configure_comfy() -> None:
    """The same settings the test server runs with, before any ComfyUI module reads them."""
    from comfy.cli_args import args

    args.cpu = True
    args.use_pytorch_cross_attention = True


_import_paths()
if HAS_HOST:
    _configure_comfy()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without the host, test files that hold no pure test are not even imported (most import ComfyUI)."""
    if HAS_HOST or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return True if PURE_MARK not in collection_path.read_text(encoding="utf-8") else None  # None: pytest decides


def pytest_collection_finish(session: pytest.Session) -> None:
    """Without the host only pure tests may run: say so up front instead of failing test by test."""
    if not HAS_HOST and any(item.get_closest_marker("pure") is None for item in session.items):
        raise pytest.UsageError(f"{NO_HOST}; or run only the pure tests: python3 -m pytest -m pure")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A pure test must not ask for the host: catch a wrong mark at collection, not on a machine without ComfyUI.
    Tests of a family this host does not have (`newer_host`) are deselected, and the summary says so."""
    for item in items:
        if item.get_closest_marker("pure") and "comfyui" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} is marked pure but uses the ComfyUI host")
    missing = {}
    for item in items:
        marker = item.get_closest_marker("newer_host")
        if marker is not None and not _host_has(marker.args[0]):
            missing.setdefault(marker.args[0], []).append(item)
    if missing:
        deselected = [item for group in missing.values() for item in group]
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]
        config._rl_newer_host = {needs: len(group) for needs, group in missing.items()}


def _host_has(needs: str) -> bool:
    """Whether this ComfyUI has `module:attribute` (e.g. comfy.model_base:LongCatImage)."""
    import importlib

    module, _, attribute = needs.partition(":")
    try:
        return hasattr(importlib.import_module(module), attribute)
    except ImportError:
        return False


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    for needs, count in getattr(config, "_rl_newer_host", {}).items():
        terminalreporter.write_line(
            f"{count} tests not run: this ComfyUI has no {needs} (a newer host's family; "
            "`python3 scripts/dev.py test --all-hosts` runs them on v0.30)"
        )


@pytest.fixture(scope="session")
def comfyui() -> Path:
    """The ComfyUI host: its folder (already first on sys.path)."""
    if not HAS_HOST:
        raise pytest.UsageError(NO_HOST)
    return COMFYUI


@pytest.fixture(scope="session")
def tiny_models(comfyui: Path) -> Path:
    manifest = MODELS / "tiny_models.json"
    if not manifest.exists():
        raise pytest.UsageError(f"No tiny models in {MODELS}: run `python3 scripts/dev.py test` (it writes them)")
    return MODELS


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def start_server(
    tiny_models: Path,
    *extra_flags: str,
    extra_custom_nodes: tuple[Path, ...] = (),
    extra_model_dirs: dict | None = None,
):
    from rl_devkit.server import ComfyServer

    return ComfyServer(
        COMFYUI,
        REPO,
        tiny_models,
        extra_flags=extra_flags,
        extra_custom_nodes=extra_custom_nodes,
        extra_model_dirs=extra_model_dirs,
    ).start()


def module_server(*extra_custom_nodes: Path):
    """A module-scoped `server` fixture (`server = module_server(...)` in a test module): a server of the module's
    own, so what it loads (FLUX.2's 9 GB float32 transformer, another pack's patches) leaves with the module."""

    @pytest.fixture(scope="module")
    def server(tiny_models):
        server = start_server(tiny_models, extra_custom_nodes=extra_custom_nodes)
        yield server
        server.cleanup()

    return server


def shipped_lora_names() -> set[str]:
    """The LoRA files the shipped API workflows name (they stand for the user's own LoRAs)."""
    import json

    names = set()
    for path in (REPO / "workflows" / "api").glob("*.json"):
        for node in json.loads(path.read_text()).values():
            name = node.get("inputs", {}).get("lora_name")
            if isinstance(name, str):
                names.add(name)
    return names


@pytest.fixture(scope="session")
def comfy_server(tiny_models: Path, tmp_path_factory):
    """One real ComfyUI server shared by the integration tests of a session. The LoRA names the shipped workflows
    use are served as the tiny FLUX LoRA, so their prompts validate (newer hosts check every combo value); the
    test-only node packs are loaded for the text encoder stand-ins (rl_devkit.demo.use_text_encoder_stand_ins)."""
    loras = tmp_path_factory.mktemp("shipped_loras")
    tiny_lora = tiny_models / "loras" / "flux_tiny_lora.safetensors"
    for name in shipped_lora_names() - {tiny_lora.name}:
        (loras / name).symlink_to(tiny_lora)
    from rl_devkit.demo import TEST_NODES

    server = start_server(tiny_models, extra_custom_nodes=(TEST_NODES,), extra_model_dirs={"loras": (loras,)})
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def comfy_models(tiny_models: Path):
    """Register the tiny models with ComfyUI's folder_paths for in-process tests of loader nodes."""
    import folder_paths

    for key in ("checkpoints", "diffusion_models", "text_encoders", "vae", "gligen"):
        folder_paths.add_model_folder_path(key, str(tiny_models / key))
    return tiny_models
