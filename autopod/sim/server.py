"""The offline simulator's server process: ``python -m autopod.sim.server``.

It serves the RunPod stand-in with pods that are real local processes
(``LocalPodBackend``) and the model hub stand-in (``modelhub``) until SIGTERM, then stops every
pod process it started.
The API key comes from ``$AUTOPOD_SIM_API_KEY`` (never from argv). It prints one
line ``{"url": ..., "pid": ...}`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autopod.sim.server")
    p.add_argument("--root", required=True, help="folder for the simulated pods' files")
    p.add_argument("--world", help="JSON file with the world to serve")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ssh-server", default="auto", choices=("auto", "openssh", "python"))
    p.add_argument("--comfy-ready-after", type=float, default=3.0)
    p.add_argument("--comfy-command", default=None)
    p.add_argument("--comfy-ws-drop", type=int, default=0, metavar="N",
                   help="every pod's ComfyUI stand-in cuts each WebSocket instead of sending its (N+1)th message")
    args = p.parse_args(argv)

    from ..core.log import setup_logging
    from .backend import LocalPodBackend
    from .modelhub import ModelHub
    from .runpod_standin import RunPodStandin

    setup_logging(stderr=False, name="sim")
    world = None
    if args.world:
        with open(args.world, encoding="utf-8") as f:
            world = json.load(f)
    backend = LocalPodBackend(Path(args.root), ssh_server=args.ssh_server,
                              comfy_ready_after=args.comfy_ready_after, comfy_command=args.comfy_command,
                              comfy_ws_drop_after=args.comfy_ws_drop)
    hub = ModelHub(Path(args.root) / "hub").start()  # Hugging Face and Civitai, as the pods reach them
    backend.hub_endpoints = hub.endpoints
    api_key = os.environ.get("AUTOPOD_SIM_API_KEY") or "sim-key"
    standin = RunPodStandin(world, api_key=api_key, port=args.port, backend=backend,
                            root=Path(args.root)).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({"url": standin.url, "pid": os.getpid(), "hub": hub.endpoints,
                      "endpoint_base_url": f"{standin.url}/v2"}), flush=True)
    while not done.wait(1.0):
        pass
    standin.stop()
    backend.close()
    hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
