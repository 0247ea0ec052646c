"""ComfyUI on a pod: is it up, and what does it run. Tunnels are created as needed."""

from __future__ import annotations

from typing import Any

from ._base import command, exit_quietly

_POD = ("pod id or name, or an inventory host, also as the word after the task "
        "(default: the pod with the only live tunnel, or the only pod)")
_NO_TUNNEL = "talk to the configured comfy_url as it is (default http://127.0.0.1:8188): no pod, no tunnel"


@command(help={"pod": _POD, "no-tunnel": _NO_TUNNEL,
               "wait": "poll for up to S seconds until ComfyUI answers (default: one check)",
               "json": "print one JSON document"}, plain_arg="pod")
def status(c, pod=None, no_tunnel=False, wait=None, json=False):
    """Print "Ready" (exit 0) or "Starting…" (exit 1) for ComfyUI on a pod."""
    from ..comfy.ops import comfy_status, parse_seconds, render_status
    from ..core.ui import progress

    st = comfy_status(pod, no_tunnel=no_tunnel, wait=parse_seconds(wait, "--wait"), on_wait=progress)
    code = render_status(st, as_json=json)
    if code:
        exit_quietly(code)


@command(help={"pod": _POD, "no-tunnel": _NO_TUNNEL, "json": "print one JSON document"}, plain_arg="pod")
def info(c, pod=None, no_tunnel=False, json=False):
    """Show ComfyUI's versions, GPUs and VRAM, RAM, queue, history and node count, and the URL to open."""
    from ..comfy.ops import comfy_info
    from ..core.output import dump_json, emit_object, table

    doc = comfy_info(pod, no_tunnel=no_tunnel)
    if json:
        dump_json(doc)
        return
    view = dict(doc)
    view["target"] = f"{doc['name']} ({doc['pod']})" if doc.get("pod") else "none (--no-tunnel)"
    view["python_version"] = (doc.get("python_version") or "").split(" ")[0] or None
    view["ram"] = _mem(doc.get("ram_free"), doc.get("ram_total"))
    view["queue"] = f"{doc['queue']['running']} running, {doc['queue']['pending']} pending"
    emit_object(view, as_json=False, fields=[
        ("target", "Pod"), ("comfyui_version", "ComfyUI"), ("frontend_version", "Frontend"),
        ("python_version", "Python"), ("pytorch_version", "PyTorch"), ("ram", "RAM"), ("queue", "Queue"),
        ("history_size", "History"), ("node_types", "Node types"), ("url", "URL"),
    ])
    if doc["devices"]:
        rows = [{"device": d["name"], "type": d["type"],
                 "vram_total": _gib(d["vram_total"]), "vram_free": _gib(d["vram_free"])} for d in doc["devices"]]
        print()
        print(table(rows, [("device", "DEVICE"), ("type", "TYPE"), ("vram_total", "VRAM TOTAL"),
                           ("vram_free", "VRAM FREE")]))
    print(f"\nOpen {doc['url']} in a browser.")


def _gib(n: Any) -> str | None:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, (int, float)) else None


def _mem(free: Any, total: Any) -> str | None:
    if not isinstance(total, (int, float)):
        return None
    return f"{_gib(free)} free of {_gib(total)}" if isinstance(free, (int, float)) else _gib(total)
