"""Which SSH target a reference (``--pod P``) means.

Resolution order:

1. an inventory host named P (a home GPU box, any server that runs ComfyUI);
2. a tunnel that is already recorded and whose daemon still runs (no API call,
   no ``runpod`` import: ``autopod comfy.status`` stays fast);
3. a RunPod pod, looked up through the API, reached on the public IP and port
   mapped to its private 22/tcp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, NotFound
from .targets import HOST_PREFIX, SSHTarget, no_direct_ssh, split_address


def resolve_target(ref: str | None, *, remote_port: int | None = None, fresh: bool = False,
                   key_path: Path | None = None) -> SSHTarget:
    """The SSH target behind ``ref`` (see the module docstring for the order).

    ``fresh=True`` skips the recorded tunnels, so a pod's endpoint is looked up
    again (after ``pod.start`` its public SSH port may have changed). ``key_path``
    (``tunnel.start --ssh-key``) replaces the configured key, which then need not exist.
    """
    from ..core import chain, config
    from ..core.inventory import load_inventory

    if ref is None:
        # `autopod pod.create ... tunnel.start`: the pod of this command line, not an older tunnel.
        chain.refuse_to_guess()
        ref = chain.pod_id()
    inv = load_inventory()
    if ref is not None:
        name = ref[len(HOST_PREFIX):] if ref.startswith(HOST_PREFIX) else ref
        host = inv.hosts.get(name)
        if host is not None:
            return _host_target(host, inv, remote_port, key_path)
        if ref.startswith(HOST_PREFIX):
            raise NotFound(f"no host '{name}' in the inventory")

    if not fresh:
        rec = _recorded_target(ref)
        if rec is not None:
            if remote_port is not None:
                rec.remote_port = int(remote_port)
            if key_path is not None:
                rec.key_path = key_path
            return rec

    return _pod_target(ref, inv, remote_port, config, key_path)


def _host_target(host: Any, inv: Any, remote_port: int | None, key_path: Path | None = None) -> SSHTarget:
    from ..core import config

    rhost, rport = split_address(host.comfy_address or config.BUILTIN["comfy_address"],
                                 what=f"hosts.{host.name}.comfy_address")
    return SSHTarget(id=HOST_PREFIX + host.name, name=host.name, kind="host", host=host.host, port=int(host.port),
                     user=host.user, key_path=key_path or config.configured_ssh_key(inv, host.key), remote_host=rhost,
                     remote_port=int(remote_port) if remote_port is not None else rport)


def _recorded_target(ref: str | None) -> SSHTarget | None:
    """The target of a live recorded tunnel: by id or name, or the only one when ``ref`` is None."""
    from .registry import entry_process_alive, recorded_entries

    live = [e for e in recorded_entries() if entry_process_alive(e)]
    if ref is None:
        chosen = live[0] if len(live) == 1 else None
    else:
        chosen = next((e for e in live if e.get("target_id") == ref), None) or \
            next((e for e in live if e.get("name") == ref), None)
    if chosen is None or not chosen.get("target"):
        return None
    try:
        t = SSHTarget.from_dict(chosen["target"])
    except (KeyError, TypeError, ValueError, ConfigError):
        return None
    t.from_record = True
    return t


def _pod_target(ref: str | None, inv: Any, remote_port: int | None, config: Any,
                key_path: Path | None = None) -> SSHTarget:
    from ..runpod.api import connect
    from ..runpod.registry import resolve_pod

    pod = resolve_pod(connect(config.api_credentials()), ref)
    direct = getattr(pod, "ssh_direct", None)
    if not direct:
        raise no_direct_ssh(pod)
    ip, port = direct
    spec = inv.pods.get(getattr(pod, "name", "") or "") or {}
    cfg = config.user_config()
    key = key_path or config.configured_ssh_key(inv)  # ssh_key is a global setting: pod specs cannot set it
    rhost, rport = split_address(getattr(pod, "comfy_address", None)
                                 or config.resolve("comfy_address", None, inventory=inv, pod_spec=spec, config=cfg))
    return SSHTarget(id=pod.id, name=pod.name or pod.id, kind="pod", host=str(ip), port=int(port),
                     user=config.pod_ssh_user(), key_path=key, remote_host=rhost,
                     remote_port=int(remote_port) if remote_port is not None else rport)
