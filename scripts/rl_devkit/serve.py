"""Serve ComfyUI with this pack and the tiny models until Ctrl-C (for poking at the editor by hand)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .server import ComfyServer

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--models", required=True)
    args = parser.parse_args()
    server = ComfyServer(Path(os.environ["COMFYUI_PATH"]), REPO, Path(args.models), port=args.port).start()
    print(f"ComfyUI is at {server.url} (log: {server.log_path}); Ctrl-C stops it", flush=True)
    try:
        while server.alive:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
