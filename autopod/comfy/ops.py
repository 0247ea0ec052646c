"""ComfyUI operations behind the ``comfy.*`` tasks: find ComfyUI, check it, describe it.

Every comfy task reaches ComfyUI through :func:`comfy_endpoint`: with a pod (or
an inventory host) it makes sure an SSH tunnel is up (reused when healthy,
recreated when its daemon died, created when missing) and talks to the local
end; with ``no_tunnel`` it uses the configured ``comfy_url`` as it is (a local
ComfyUI, or one reached some other way).

Imports stay lazy: with a tunnel already up, ``autopod comfy.status`` reads the
tunnel record and makes one HTTP request, without importing the RunPod SDK.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..core.errors import ComfyError, UsageError

log = logging.getLogger(__name__)

# What the official image does on a first boot: copy ComfyUI (several GB) onto the volume, then start it.
FIRST_BOOT_HINT = ("on a first boot the image copies ComfyUI onto the network volume before starting it, "
                   "which can take 5-10 minutes; later boots take under a minute")
STATUS_TIMEOUT = 5.0  # seconds for one /system_stats probe
POLL_INTERVAL = 2.0


@dataclass
class ComfyEndpoint:
    """Where ComfyUI answers for this machine, and how it was reached."""

    url: str
    target_id: str | None = None  # pod id or host:<name>; None with --no-tunnel
    target_name: str | None = None
    local_port: int | None = None
    tunnel: str | None = None  # "created" (new or recreated), "reused", or None without a tunnel
    comfy_address: str | None = None  # ComfyUI's host:port as the pod or host sees it (through a tunnel)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ComfyStatus:
    ready: bool
    endpoint: ComfyEndpoint
    comfyui_version: str | None = None
    waited_s: float = 0.0
    detail: str | None = None  # why it is not ready (the last error)

    @property
    def state(self) -> str:
        return "ready" if self.ready else "starting"

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "status": self.state, "url": self.endpoint.url,
                "pod": self.endpoint.target_id, "name": self.endpoint.target_name,
                "tunnel": self.endpoint.tunnel, "comfyui_version": self.comfyui_version,
                "waited_s": round(self.waited_s, 1), "detail": self.detail}


def parse_seconds(value: Any, flag: str = "--wait") -> float:
    """A seconds flag as typed; not given is 0."""
    from ..core.flags import MAX_WAIT_S, number

    return number(value, flag, float, minimum=0, maximum=MAX_WAIT_S) or 0.0


def render_status(st: ComfyStatus, *, as_json: bool) -> int:
    """Print a status the way ``comfy.status`` does and return its exit code (0 ready, 1 starting).

    Kept free of invoke and tabulate so that the console script's quick path
    (``autopod.launch``) and the invoke task print the same thing.
    """
    from ..core.output import dump_json

    if as_json:
        dump_json(st.to_dict())
    elif st.ready:
        print("Ready")
    else:
        print("Starting…")
        print(f"ComfyUI does not answer at {st.endpoint.url} yet ({st.detail}).\n"
              f"Hint: {FIRST_BOOT_HINT}. To wait for it: autopod comfy.status --wait 600", file=sys.stderr)
    sys.stdout.flush()
    return 0 if st.ready else 1


def fleet_for(fleet: str | None, pod: str | None, no_tunnel: bool = False) -> str | None:
    """The fleet a comfy task works on: ``--fleet``, or this command line's fleet when no ``--pod`` is
    given (``core.chain``); ``--no-tunnel`` takes none."""
    from ..core.chain import fleet_target

    name = fleet_target(fleet, pod) if not no_tunnel or fleet is not None else None
    if name is not None and no_tunnel:
        raise UsageError("--no-tunnel talks to the configured comfy_url; it takes no --fleet")
    return name


def configured_url() -> str:
    """``comfy_url`` from the inventory defaults or config.yaml (default http://127.0.0.1:8188)."""
    from ..core import config
    from ..core.inventory import load_inventory

    return str(config.resolve("comfy_url", None, inventory=load_inventory(), config=config.user_config()))


def comfy_endpoint(pod: str | None = None, *, no_tunnel: bool = False) -> ComfyEndpoint:
    """The URL to talk to ComfyUI on ``pod``, with a tunnel ensured unless ``no_tunnel``.

    ``pod=None`` means the pod that is meant: the one with the only live tunnel,
    the one just created in a chained command, or the only pod (see
    ``autopod.tunnels.resolve.resolve_target``).
    """
    if no_tunnel:
        if pod:
            raise UsageError("--no-tunnel talks to the configured comfy_url; it takes no --pod")
        return ComfyEndpoint(url=configured_url().rstrip("/"))
    from ..tunnels.manager import ensure_tunnel
    from ..tunnels.resolve import resolve_target

    target = resolve_target(pod)
    outcome = ensure_tunnel(target)
    port = int(outcome.data.local_port)
    log.debug("tunnel to %s (%s): %s on 127.0.0.1:%d", target.name, target.id,
              "created" if outcome.changed else "reused", port)
    return ComfyEndpoint(url=f"http://127.0.0.1:{port}", target_id=target.id, target_name=target.name,
                         local_port=port, tunnel="created" if outcome.changed else "reused",
                         comfy_address=f"{target.remote_host}:{target.remote_port}")


def comfy_status(pod: str | None = None, *, no_tunnel: bool = False, wait: float = 0.0,
                 poll_interval: float = POLL_INTERVAL, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 on_wait: Callable[[str], None] | None = None) -> ComfyStatus:
    """Is ComfyUI answering? One probe, or polling for up to ``wait`` seconds.

    Never raises because ComfyUI is down: that is the "starting" answer. Errors
    in finding the pod or building the tunnel do raise.
    """
    from .client import ComfyUIClient

    if wait < 0:
        raise UsageError(f"--wait must be 0 or more seconds, got {wait:g}")
    endpoint = comfy_endpoint(pod, no_tunnel=no_tunnel)
    start = clock()
    deadline = start + wait
    announced = False
    with ComfyUIClient(endpoint.url, timeout=STATUS_TIMEOUT) as client:
        while True:
            try:
                stats = client.get_system_stats()
                version = (stats.get("system") or {}).get("comfyui_version")
                return ComfyStatus(True, endpoint, comfyui_version=version, waited_s=clock() - start)
            except ComfyError as e:
                detail = str(e)
            remaining = deadline - clock()
            if remaining <= 0:
                return ComfyStatus(False, endpoint, waited_s=clock() - start, detail=detail)
            if on_wait and not announced:
                on_wait(f"ComfyUI at {endpoint.url} is not answering yet; waiting up to {wait:g}s")
                announced = True
            sleep(min(poll_interval, remaining))


def comfy_info(pod: str | None = None, *, no_tunnel: bool = False) -> dict[str, Any]:
    """Versions, devices and memory, queue, history size and node count of a running ComfyUI."""
    from .client import ComfyUIClient, ComfyUnreachable

    endpoint = comfy_endpoint(pod, no_tunnel=no_tunnel)
    with ComfyUIClient(endpoint.url) as client:
        try:
            stats = client.get_system_stats()
        except ComfyUnreachable as e:
            raise ComfyUnreachable(f"{e}. If the pod has just started: {FIRST_BOOT_HINT}; "
                                   "`autopod comfy.status --wait 600` waits for it") from None
        queue = client.get_queue_info()
        history = client.get_history()
        nodes = client.get_object_info()
    system = stats.get("system") or {}
    devices = [{"name": d.get("name"), "type": d.get("type"), "index": d.get("index"),
                "vram_total": d.get("vram_total"), "vram_free": d.get("vram_free"),
                "torch_vram_total": d.get("torch_vram_total"), "torch_vram_free": d.get("torch_vram_free")}
               for d in stats.get("devices") or []]
    return {
        "url": endpoint.url,
        "pod": endpoint.target_id,
        "name": endpoint.target_name,
        "tunnel": endpoint.tunnel,
        "comfyui_version": system.get("comfyui_version"),
        "frontend_version": system.get("required_frontend_version"),
        "python_version": system.get("python_version"),
        "pytorch_version": system.get("pytorch_version"),
        "os": system.get("os"),
        "ram_total": system.get("ram_total"),
        "ram_free": system.get("ram_free"),
        "devices": devices,
        "queue": {"running": queue.running_count, "pending": queue.pending_count},
        "history_size": len(history),
        "node_types": len(nodes),
    }


# -- a fleet: every member's ComfyUI ---------------------------------------------------------------


def fleet_status(fleet: str, *, wait: float = 0.0) -> tuple[list[Any], str]:
    """``comfy.status --fleet``: each member's ComfyUI, ready or starting (a failed result), in parallel."""
    from ..core.fanout import Result
    from ..runpod.fleet import on_members

    def one(pod: Any, cancel: Any) -> Result:
        st = comfy_status(pod.id, wait=wait, sleep=cancel.sleep)
        doc = {"member": pod.name, **st.to_dict()}
        if st.ready:
            return Result(pod.name, True, f"{pod.name}: Ready (ComfyUI {st.comfyui_version or '?'} at "
                                          f"{st.endpoint.url})", False, doc)
        return Result(pod.name, False, f"{pod.name}: Starting… ({st.detail})", False, doc, 1)

    results = on_members(fleet, one, running_only=True)
    return results, f"fleet {fleet}: {sum(r.ok for r in results)} of {len(results)} ComfyUI ready"


def fleet_info(fleet: str) -> tuple[list[Any], str]:
    """``comfy.info --fleet``: a line per member (version, GPU and free VRAM, queue, URL)."""
    from ..core.fanout import Result
    from ..runpod.fleet import on_members

    def one(pod: Any, _cancel: Any) -> Result:
        doc = comfy_info(pod.id)
        dev = (doc.get("devices") or [{}])[0]
        vram = (f", {dev['vram_free'] / 2**30:.1f} of {dev['vram_total'] / 2**30:.1f} GiB free"
                if isinstance(dev.get("vram_free"), (int, float)) and dev.get("vram_total") else "")
        line = (f"{pod.name}: ComfyUI {doc.get('comfyui_version') or '?'}, {dev.get('name') or 'no GPU'}{vram}, "
                f"queue {doc['queue']['running']} running {doc['queue']['pending']} pending, {doc['url']}")
        return Result(pod.name, True, line, False, {"member": pod.name, **doc})

    results = on_members(fleet, one, running_only=True)
    return results, f"fleet {fleet}: {sum(r.ok for r in results)} of {len(results)} ComfyUI answering"
