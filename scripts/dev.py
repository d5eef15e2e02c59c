#!/usr/bin/env python3
"""One entry point for a fresh machine: `python3 scripts/dev.py demo` and `python3 scripts/dev.py test`.

Without COMFYUI_PATH it builds everything it needs inside the repo (all git-ignored):
`.torch/` (torch, torchvision and torchaudio, one copy that every venv here puts on its path), `.venv/` (the
test tools), `.comfyui/` (a real ComfyUI from PyPI, with this pack linked into its custom_nodes) and
`.cache/tiny_models/` (small random-weight models of the real architectures).
With COMFYUI_PATH=/path/to/ComfyUI it uses that ComfyUI and the Python running this script instead.
`test --host v0.30` runs on upstream ComfyUI v0.30.0 instead, unpacked from ../shared/hosts into `.comfyui-v0.30/`
with its own `.venv-v0.30/` (the same torch); `test --all-hosts` runs the whole suite on the floor host, then every
test that starts a server or a browser, the model-level family checks and those of newer hosts' families
(`-m "server or browser or family or newer_host"`), on v0.30.0 where ../shared/hosts has it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
VENV = REPO / ".venv"
TORCH_SITE = REPO / ".torch"
LOCAL_HOST = REPO / ".comfyui"
CACHE = REPO / ".cache"
TINY_MODELS = Path(os.environ.get("RL_MODELS_DIR", CACHE / "tiny_models")).resolve()
DEV_REQUIREMENTS = REPO / "requirements-dev.txt"
BOOTSTRAPPED = "RL_BOOTSTRAPPED"
# The newer host: a source archive kept beside the clone (CI checks out shared/ next to the repository).
HOSTS_DIR = Path(os.environ.get("RL_HOSTS_DIR", REPO.parent / "shared" / "hosts")).resolve()
V030_HOST = REPO / ".comfyui-v0.30"
V030_VENV = REPO / ".venv-v0.30"
# the tests that start ComfyUI itself, the model-level family checks, and those of families only newer hosts have
# (markers in pyproject.toml)
NEWER_HOST_TESTS = "server or browser or family or newer_host"

sys.path.insert(0, str(SCRIPTS))
from rl_devkit import host  # noqa: E402  (standard library only)


def v030_archive() -> Path:
    return HOSTS_DIR / host.V030_ARCHIVE_NAME


def bootstrap(argv: list[str], needs_host: bool = True, host_name: str = "floor") -> None:
    """Make sure a Python with torch, ComfyUI (unless `needs_host` is false) and the test tools exists, then
    re-run this script in it."""
    comfyui = os.environ.get("COMFYUI_PATH")
    env = dict(os.environ, **{BOOTSTRAPPED: "1"})
    if host_name == "v0.30":
        if not v030_archive().exists():
            sys.exit(f"--host v0.30 needs {v030_archive()} (set RL_HOSTS_DIR to the folder that holds it)")
        started = time.monotonic()
        python = host.ensure_venv(V030_VENV, DEV_REQUIREMENTS, host.ensure_torch_site(TORCH_SITE))
        env["COMFYUI_PATH"] = str(host.ensure_archived_host(V030_HOST, python, v030_archive()))
        host.link_pack(Path(env["COMFYUI_PATH"]), REPO)
        host.log(f"ComfyUI v0.30.0 host ready in {time.monotonic() - started:.0f}s")
    elif comfyui:
        python = Path(sys.executable)
        _ensure_dev_tools(python)
        comfyui_path = Path(comfyui).resolve()
        if not (comfyui_path / "main.py").exists():
            sys.exit(f"COMFYUI_PATH={comfyui} has no main.py: point it at a ComfyUI checkout")
        env["COMFYUI_PATH"] = str(comfyui_path)
    else:
        python = host.ensure_venv(VENV, DEV_REQUIREMENTS, host.ensure_torch_site(TORCH_SITE))
        if needs_host:
            env["COMFYUI_PATH"] = str(host.ensure_host(LOCAL_HOST, python, CACHE))
            host.link_pack(Path(env["COMFYUI_PATH"]), REPO)
    os.execve(str(python), [str(python), str(Path(__file__).resolve()), *argv], env)


def _ensure_dev_tools(python: Path) -> None:
    probe = subprocess.run([str(python), "-c", "import pytest, websocket, selenium, ruff"], capture_output=True)
    if probe.returncode != 0:
        host.log(f"installing test tools into {python}")
        host.pip_install(python, "-r", str(DEV_REQUIREMENTS))


def devkit_env() -> dict[str, str]:
    """Environment for child processes that import ComfyUI (never the repo root: `nodes/` would shadow it)."""
    comfyui = os.environ["COMFYUI_PATH"]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([comfyui, str(SCRIPTS)]), RL_MODELS_DIR=str(TINY_MODELS))


def ensure_tiny_models() -> None:
    subprocess.run([sys.executable, "-m", "rl_devkit.tiny_models", str(TINY_MODELS)], env=devkit_env(), check=True)


def ensure_chromium() -> None:
    """The browser tests drive Debian's chromium + chromedriver; install them when we may."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        host.log("installing chromium and chromium-driver with apt-get")
        quiet = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=quiet, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
            check=True,
            env=quiet,
            stdout=subprocess.DEVNULL,
        )
        return
    sys.exit("The browser tests need chromium and chromedriver: sudo apt-get install chromium chromium-driver")


def cmd_test(args: argparse.Namespace) -> int:
    ensure_tiny_models()
    ensure_chromium()
    env = devkit_env()
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", *args.pytest_args], cwd=REPO, env=env)
    host.log(f"tests on {args.host} host took {(time.monotonic() - started) / 60:.1f} min")
    code = result.returncode
    if code == 5:  # pytest ran no test: that is a failure for us
        print("pytest collected no tests", file=sys.stderr)
        code = 1
    if args.all_hosts:
        code = max(code, _test_on_v030(args.pytest_args))
    return code


def _test_on_v030(pytest_args: list[str]) -> int:
    """The server and browser tests again, on ComfyUI v0.30.0 (a fresh bootstrap of this script)."""
    if not v030_archive().exists():
        print(f"[test] no {v030_archive()}: ComfyUI v0.30.0 not tested, floor host only", flush=True)
        return 0
    env = {k: v for k, v in os.environ.items() if k not in (BOOTSTRAPPED, "COMFYUI_PATH")}
    # Our marker selection comes first, so a `-m` the caller gave replaces it.
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "test",
        "--host",
        "v0.30",
        "-m",
        NEWER_HOST_TESTS,
        *pytest_args,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def cmd_demo(args: argparse.Namespace) -> int:
    models = Path(args.models).resolve() if args.models else None
    if models is None:
        ensure_tiny_models()
    cmd = [
        sys.executable,
        "-m",
        "rl_devkit.demo",
        "--out",
        str(Path(args.out).resolve()),
        "--models",
        str(models or TINY_MODELS),
    ]
    if models is None:
        cmd.append("--tiny")
    if args.only:
        cmd += ["--only", args.only]
    return subprocess.run(cmd, cwd=REPO, env=devkit_env()).returncode


def cmd_server(args: argparse.Namespace) -> int:
    ensure_tiny_models()
    cmd = [sys.executable, "-m", "rl_devkit.serve", "--port", str(args.port), "--models", str(TINY_MODELS)]
    return subprocess.run(cmd, cwd=REPO, env=devkit_env()).returncode


def cmd_bench(args: argparse.Namespace) -> int:
    scripts = sorted((REPO / "tests" / "benchmarks").glob(f"bench_{args.name or ''}*.py"))
    if not scripts:
        print(f"no benchmark matches {args.name!r}", file=sys.stderr)
        return 1
    env = devkit_env()
    return max(
        subprocess.run([sys.executable, str(s), *args.bench_args], cwd=REPO, env=env).returncode for s in scripts
    )


def cmd_pictures(args: argparse.Namespace) -> int:
    ensure_chromium()
    return subprocess.run([sys.executable, "-m", "rl_devkit.pictures"], cwd=REPO, env=devkit_env()).returncode


def cmd_lint(args: argparse.Namespace) -> int:
    """ruff's lint rules and its format check (rules and format: pyproject.toml); both run, either fails."""
    ruff = [sys.executable, "-m", "ruff"]
    results = [
        subprocess.run([*ruff, *check], cwd=REPO).returncode for check in (["check", "."], ["format", "--check", "."])
    ]
    return max(results)


def cmd_setup(args: argparse.Namespace) -> int:
    ensure_tiny_models()
    return 0


def _split_test_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """(`--host X` / `--host=X` / `--all-hosts`, the rest): pytest's own `-m EXPR` must keep its place."""
    own, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--all-hosts" or arg.startswith("--host="):
            own.append(arg)
        elif arg == "--host" and i + 1 < len(argv):
            own += argv[i : i + 2]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return own, rest


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/dev.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    test = sub.add_parser("test", help="install what is missing, then run the test suite (pytest)")
    test.add_argument(
        "--host",
        choices=("floor", "v0.30"),
        default="floor",
        help="floor: ComfyUI 0.3.75 from PyPI (default); v0.30: upstream v0.30.0 from ../shared/hosts",
    )
    test.add_argument(
        "--all-hosts",
        action="store_true",
        help="the whole suite on the floor host, then the server and browser tests on v0.30.0",
    )
    test.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments")
    test.set_defaults(func=cmd_test)
    demo = sub.add_parser("demo", help="run the example workflows headless and write images to outputs/")
    demo.add_argument("--models", help="a ComfyUI models folder with real weights (default: tiny random models)")
    demo.add_argument("--out", default=str(REPO / "outputs"), help="where the images go")
    demo.add_argument("--only", help="run only the workflows whose file name contains this")
    demo.set_defaults(func=cmd_demo)
    server = sub.add_parser("server", help="start ComfyUI with this pack and the tiny models, for a browser")
    server.add_argument("--port", type=int, default=8188)
    server.set_defaults(func=cmd_server)
    bench = sub.add_parser("bench", help="run the benchmarks in tests/benchmarks (name prefix optional)")
    bench.add_argument("name", nargs="?")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    pictures = sub.add_parser("pictures", help="redraw the README's editor picture (docs/images) in headless Chromium")
    pictures.set_defaults(func=cmd_pictures)
    lint = sub.add_parser("lint", help="ruff check and ruff format --check (CI runs it before the tests)")
    lint.set_defaults(func=cmd_lint)
    setup = sub.add_parser("setup", help="only install the environment, host and tiny models")
    setup.set_defaults(func=cmd_setup)
    if argv[:1] == ["test"]:  # our own options anywhere; everything else goes to pytest verbatim, in order
        own, rest = _split_test_options(argv[1:])
        args = parser.parse_args(["test", *own])
        args.pytest_args = [a for a in rest if a != "--"]
        return args
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("test", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    passthrough = [a for a in extra if a != "--"]
    if args.command == "test":
        args.pytest_args = [a for a in args.pytest_args if a != "--"] + passthrough
    elif args.command == "bench":
        args.bench_args = [a for a in args.bench_args if a != "--"] + passthrough
    return args


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)  # fail fast on a typo, before any install
    if os.environ.get(BOOTSTRAPPED) != "1":
        bootstrap(argv, needs_host=args.command != "lint", host_name=getattr(args, "host", "floor"))
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
