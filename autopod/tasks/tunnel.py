"""SSH tunnels to a pod's (or an inventory host's) ComfyUI on 127.0.0.1, kept alive in the background."""

from __future__ import annotations

from typing import Any

from ..core.chain import fleet_target
from ..core.flags import number
from ..core.output import Outcome, emit_object, emit_outcome, emit_rows
from ._base import command, exit_quietly, render_members

_TARGET_HELP = ("pod id or name, or inventory host name, also as the word after the task "
                "(default: the only tunnel, or the only pod)")
_FLEET_HELP = ("every member of fleet NAME, in parallel: a line each and a summary; exit 1 if any failed; "
               "--json: a list, one document per member")


def _render(outcome: Outcome, as_json: bool) -> None:
    data = outcome.data
    if hasattr(data, "to_dict"):
        outcome.data = data.to_dict()
        outcome.extra.setdefault("local_port", data.local_port)
        outcome.extra.setdefault("url", data.url)
    emit_outcome(outcome, as_json=as_json)


@command(help={
    "pod": _TARGET_HELP,
    "fleet": _FLEET_HELP,
    "local_port": "port on 127.0.0.1 (default 8188; when taken, the next free one unless given explicitly)",
    "remote_port": "port behind the SSH server (default: the target's ComfyUI port, 8188)",
    "backend": "sshtunnel (default) or openssh (ssh -N -L); config key tunnel_backend",
    "timeout": "seconds to wait for a working connection through the tunnel, 1..3600 (default 30)",
    "ssh_key": "private key to log in with, instead of the configured ssh_key",
    "json": "print one JSON document",
}, plain_arg="pod")
def start(c, pod=None, fleet=None, local_port=None, remote_port=None, backend=None, timeout=None, ssh_key=None,
          json=False):
    """Start (or reuse) a background tunnel; succeeds once a connection through it works."""
    from ..core.errors import UsageError
    from ..tunnels.manager import BACKENDS, start_tunnel

    # Every flag is checked before anything resolves the pod (which may ask the API).
    lport = number(local_port, "--local-port", int, minimum=1, maximum=65535)
    rport = number(remote_port, "--remote-port", int, minimum=1, maximum=65535)
    t = number(timeout, "--timeout", int, minimum=1, maximum=3600)
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"--backend must be {' or '.join(BACKENDS)}, got {backend!r}")
    if (fleet := fleet_target(fleet, pod)) is not None:
        from ..tunnels import fleet as fleets

        render_members(fleets.start(fleet, local_port=lport, remote_port=rport, backend=backend,
                                  timeout=float(t) if t else 30.0, ssh_key=ssh_key), json)
        return
    outcome = start_tunnel(pod, local_port=lport, remote_port=rport, backend=backend, timeout=float(t) if t else 30.0,
                           ssh_key=ssh_key)
    _render(outcome, json)


@command(help={"pod": _TARGET_HELP, "fleet": _FLEET_HELP, "json": "print one JSON document"}, plain_arg="pod")
def stop(c, pod=None, fleet=None, json=False):
    """Stop the tunnel to a pod or host."""
    from ..tunnels.manager import stop_tunnel

    if (fleet := fleet_target(fleet, pod)) is not None:
        from ..tunnels import fleet as fleets

        render_members(fleets.stop(fleet), json)
        return

    _render(stop_tunnel(pod), json)


@command(name="stop-all", help={"json": "print one JSON document"})
def stop_all(c, json=False):
    """Stop every recorded tunnel."""
    from ..tunnels.manager import stop_all as _stop_all

    _render(_stop_all(), json)


_FIELDS = [("name", "NAME"), ("target_id", "TARGET"), ("local", "LOCAL"), ("remote", "REMOTE"), ("ssh", "SSH"),
           ("backend", "BACKEND"), ("pid", "PID"), ("state", "STATE"), ("healthy", "HEALTHY")]


def _row(info: Any) -> dict[str, Any]:
    d = info.to_dict()
    d.update(local=info.local_address, remote=f"{info.remote_host}:{info.remote_port}",
             ssh=f"{info.ssh_host}:{info.ssh_port}", url=info.url)
    return d


@command(help={"pod": _TARGET_HELP, "fleet": _FLEET_HELP, "json": "print one JSON document"}, plain_arg="pod")
def status(c, pod=None, fleet=None, json=False):
    """Exit 0 when the tunnel runs and a connection through it works, else 1 (`tunnel.status || tunnel.start`)."""
    from ..tunnels.manager import tunnel_status

    if (fleet := fleet_target(fleet, pod)) is not None:
        from ..tunnels import fleet as fleets

        render_members(fleets.status(fleet), json)
        return

    info = tunnel_status(pod)
    if info is None:
        doc = {"target_id": pod, "running": False, "healthy": False, "msg": f"no tunnel to {pod or 'any target'}"}
        emit_object(doc, as_json=json, fields=[("msg", "STATUS")])
        exit_quietly(1)
    row = _row(info)
    row["running"] = info.alive
    fields = _FIELDS + [("url", "URL")] + ([("error", "ERROR")] if info.error and not info.healthy else [])
    emit_object(row, as_json=json, fields=fields)
    if not info.healthy:
        exit_quietly(1)


@command(name="list", aliases=["ls"], help={"json": "print one JSON list"})
def list_(c, json=False):
    """Recorded tunnels, each health-checked."""
    from ..tunnels.manager import list_tunnels

    emit_rows([_row(i) for i in list_tunnels()], _FIELDS, as_json=json, empty="no tunnels")


@command(help={"json": "print one JSON document"})
def cleanup(c, json=False):
    """Drop recorded tunnels whose daemon is gone (never signals a pid that is not ours)."""
    from ..tunnels.manager import cleanup as _cleanup

    _render(_cleanup(), json)
