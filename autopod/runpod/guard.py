"""The idle watchdog, from this side: install it in a pod over SSH, read its state, remove it.

The watchdog itself is ``watchdog.py`` in this folder, a dependency-free program copied into the
pod and started there detached, so it keeps guarding the pod after this process exits and while
the laptop is closed. Each call is one SSH round trip: a short POSIX shell script that finds the
pod's Python and runpodctl and hands over to the program, which answers with one JSON line.

The watchdog keeps its files on the pod's volume (``<volume mount>/.autopod/guard/<pod id>``) when
that is writable, so that after it stopped the pod, ``pod.guard --status`` on the started pod still
says why; else under ``$HOME`` (the container disk, which a stop wipes). ``AUTOPOD_GUARD_DIR`` in the
pod's environment overrides both (the simulator sets it).
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ..core import chain
from ..core import config as _config
from ..core.errors import AutopodError, ConfigError, UsageError
from ..core.inventory import IDLE_ACTIONS, load_inventory
from ..core.output import Outcome
from ..core.ui import progress
from .access import running_pod, ssh_command
from .records import Pod, fmt_duration
from .registry import entries_or_warn, remember, resolve_pod, set_entry_field

log = logging.getLogger(__name__)

PROGRAM = Path(__file__).with_name("watchdog.py")
SSH_TIMEOUT_S = 60.0
DEFAULT_DEAD_MINUTES = 30.0  # a first boot of the ComfyUI image can take that long
MAX_POLL_S = 30.0


def settings(idle_minutes: float, action: str = "stop", dead_minutes: float | None = None) -> dict[str, Any]:
    """The watchdog's settings as autopod records them (pods.json) and shows them."""
    if action not in IDLE_ACTIONS:
        raise UsageError(f"invalid --action {action!r}: use one of {', '.join(IDLE_ACTIONS)}")
    return {"idle_minutes": float(idle_minutes), "action": action,
            "dead_minutes": float(dead_minutes) if dead_minutes is not None else None}


def pod_config(pod: Pod, s: dict[str, Any]) -> dict[str, Any]:
    """What the program in the pod reads (config.json). ComfyUI not answering counts as dead after
    ``dead_minutes``: by default 30 minutes or the idle time, whichever is longer."""
    idle_s = s["idle_minutes"] * 60.0
    dead = s.get("dead_minutes")
    dead_s = dead * 60.0 if dead is not None else max(DEFAULT_DEAD_MINUTES * 60.0, idle_s)
    poll_s = round(min(MAX_POLL_S, max(0.2, idle_s / 12.0)), 3)
    return {"pod_id": pod.id, "comfy_address": pod.comfy_address, "idle_s": idle_s, "dead_s": dead_s,
            "action": s["action"], "poll_s": poll_s, "http_timeout_s": round(max(1.0, min(10.0, poll_s * 4)), 3),
            "installed_at": time.time()}


def _dir_script(pod: Pod) -> str:
    mount = shlex.quote(pod.volume_mount or "/workspace")
    pid = shlex.quote(pod.id)
    return (
        'd="${AUTOPOD_GUARD_DIR:-}"\n'
        'if [ -z "$d" ]; then\n'
        f'  if [ -d {mount} ] && [ -w {mount} ]; then d={mount}/.autopod/guard/{pid}; '
        f'else d="$HOME/.autopod/guard/"{pid}; fi\n'
        'fi\n'
        'py="$(command -v python3 || command -v python || true)"\n'
        "if [ -z \"$py\" ]; then echo '{\"error\": \"no-python\"}'; exit 0; fi\n"
    )


def _install_script(pod: Pod, config: dict[str, Any]) -> str:
    return ("set -e\numask 077\n" + _dir_script(pod)
            + "if ! command -v runpodctl >/dev/null 2>&1; then echo '{\"error\": \"no-runpodctl\"}'; exit 0; fi\n"
            + 'mkdir -p "$d"\nnew="$d/watchdog.py.new.$$"\ncat > "$new"\n'
            + f'exec "$py" "$new" install "$d" {shlex.quote(json.dumps(config))}\n')


def _command_script(pod: Pod, command: str) -> str:
    return ("set -e\n" + _dir_script(pod)
            + "if [ ! -f \"$d/watchdog.py\" ]; then echo '{\"installed\": false}'; exit 0; fi\n"
            + f'exec "$py" "$d/watchdog.py" {command} "$d"\n')


PROBLEMS = {
    "no-python": "the pod has no python3, which the watchdog runs on; use an image with Python "
                 "(the ComfyUI images have it), or rely on --stop-after",
    "no-runpodctl": "the pod has no runpodctl, which the watchdog stops it with (RunPod installs it in every "
                    "pod; a custom image may lack it)",
}


def _remote(pod: Pod, script: str, *, stdin: str | None = None, timeout: float = SSH_TIMEOUT_S) -> dict[str, Any]:
    """Run ``script`` with sh on the pod; returns the JSON line it printed last."""
    if not shutil.which("ssh"):
        raise ConfigError("the OpenSSH client `ssh` is not installed")
    key = _config.configured_ssh_key(load_inventory())
    argv = ssh_command(pod, key, "sh -c " + shlex.quote(script))
    argv[1:1] = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    try:
        done = subprocess.run(argv, input=stdin if stdin is not None else "", capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AutopodError(f"pod {pod.name} ({pod.id}): no answer over SSH within {timeout:g} s") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise AutopodError(f"pod {pod.name} ({pod.id}): the watchdog command failed over SSH "
                           f"(exit {done.returncode}): {tail}")
    doc = json.loads(lines[-1])
    if doc.get("error"):
        raise AutopodError(f"pod {pod.name} ({pod.id}): {PROBLEMS.get(doc['error'], doc['error'])}")
    return doc


def _running_pod(api: Any, ref: str | Pod | None) -> Pod:
    return running_pod(api, ref, why="the watchdog runs inside a running pod, so start it")


def describe(s: dict[str, Any]) -> str:
    dead = s.get("dead_minutes")
    verb = "terminates" if s["action"] == "terminate" else "stops"
    return (f"{verb} it after {_minutes(s['idle_minutes'])} idle"
            + (f" or {_minutes(dead)} with ComfyUI not answering" if dead is not None else ""))


def _minutes(m: float) -> str:
    """30 -> "30 min", 0.25 -> "15 s", 90 -> "1h30m"."""
    if m < 1:
        return f"{m * 60:g} s"
    if m >= 60:
        return fmt_duration(round(m * 60)) or f"{m:g} min"
    return f"{m:g} min"


def ensure(api: Any, ref: str | None, *, idle_minutes: Any = None, action: Any = None,
           dead_minutes: Any = None) -> Outcome:
    """``pod.guard``: the watchdog with these settings, each from the flag, else the inventory
    (the pod's spec, its defaults) or config.yaml, as for ``pod.create``."""
    from ..core.flags import number  # noqa: PLC0415

    pod = _running_pod(api, ref)
    inventory = load_inventory()
    user = _config.user_config()

    def r(key: str, flag: Any) -> Any:
        return _config.resolve(key, flag, inventory=inventory, pod_spec=inventory.pods.get(pod.name, {}), config=user)

    idle = number(r("idle_minutes", idle_minutes), "--idle-minutes", float, minimum=0.01, maximum=7 * 24 * 60)
    if idle is None:
        raise UsageError("give --idle-minutes N (or set idle_minutes in the inventory or config.yaml): "
                         "the watchdog stops the pod after N minutes without ComfyUI activity")
    dead = number(r("dead_minutes", dead_minutes), "--dead-minutes", float, minimum=0.01, maximum=7 * 24 * 60)
    return install(api, pod, settings(idle, str(r("idle_action", action) or "stop"), dead))


def install(api: Any, ref: str | Pod | None, s: dict[str, Any]) -> Outcome:
    """Install the watchdog with settings ``s`` (``settings()``), or keep the one that runs with them (``ok``)."""
    pod = _running_pod(api, ref)
    progress(f"installing the idle watchdog in pod {pod.name} ({pod.id})")
    doc = _remote(pod, _install_script(pod, pod_config(pod, s)), stdin=PROGRAM.read_text(encoding="utf-8"))
    if not doc.get("running"):
        raise AutopodError(f"pod {pod.name} ({pod.id}): the watchdog did not start; its log: "
                           + " | ".join(doc.get("log_tail") or ["(empty)"]))
    remember(pod.id, guard={**s, "installed_at": time.time()})
    status = _view(pod, doc)
    if doc.get("result") == "ok":
        return Outcome(False, f"pod {pod.name} ({pod.id}): the watchdog already runs and {describe(s)}",
                       key="guard", data=status)
    return Outcome(True, f"pod {pod.name} ({pod.id}): the watchdog {describe(s)}; it runs in the pod, "
                         "so it keeps guarding with this machine off", key="guard", data=status)


def remove(api: Any, ref: str | None) -> Outcome:
    pod = _running_pod(api, ref)
    doc = _remote(pod, _command_script(pod, "remove"))
    set_entry_field(pod.id, "guard", None)
    if doc.get("installed") is False or doc.get("result") == "ok":
        return Outcome(False, f"pod {pod.name} ({pod.id}) has no watchdog running", key="guard",
                       data=_view(pod, doc))
    return Outcome(True, f"pod {pod.name} ({pod.id}): removed the watchdog", key="guard", data=_view(pod, doc))


def status(api: Any, ref: str | Pod | None) -> dict[str, Any]:
    """The watchdog's state as the pod sees it. A pod that is not running has none running;
    its last words are read when it runs again."""
    pod = ref if isinstance(ref, Pod) else resolve_pod(api, ref)
    chain.set_pod(pod.id)
    recorded = entries_or_warn().get(pod.id, {}).get("guard")
    if pod.status != "RUNNING" or not pod.ssh_direct:
        return {"pod": pod.id, "name": pod.name, "pod_status": pod.status, "installed": False, "running": False,
                "recorded": recorded,
                "note": f"the pod is {pod.status}; the watchdog's log is read when the pod runs again"}
    return _view(pod, _remote(pod, _command_script(pod, "status")), recorded)


def _view(pod: Pod, doc: dict[str, Any], recorded: Any = None) -> dict[str, Any]:
    out = {"pod": pod.id, "name": pod.name, "pod_status": pod.status, "installed": doc.get("installed", True)}
    out.update({k: v for k, v in doc.items() if k not in ("result", "installed")})
    out.setdefault("running", False)
    if recorded is not None:
        out["recorded"] = recorded
    return out


def recorded(pod_id: str) -> dict[str, Any] | None:
    """The watchdog autopod installed in this pod (pods.json), as ``settings()``; None when none was."""
    s = entries_or_warn().get(pod_id, {}).get("guard")
    if not s:
        return None
    return settings(s["idle_minutes"], s.get("action") or "stop", s.get("dead_minutes"))


def summary(doc: dict[str, Any]) -> str:
    """One line for people: what the watchdog is doing."""
    if not doc.get("running"):
        out = "not running" + (" (removed)" if doc.get("removed") else "") + (f"; {doc['note']}" if doc.get("note") else "")
        acted = doc.get("acted")
        if acted:
            verb = "terminated" if acted.get("action") == "terminate" else "stopped"
            out += f"; it {verb} the pod at {acted.get('at')}: {acted.get('why')}"
        return out
    parts = [f"running: {doc.get('action') or 'stop'} after {_minutes(doc.get('idle_minutes') or 0)} idle"]
    if doc.get("busy"):
        parts.append("busy: " + ", ".join(doc["busy"]))
    elif doc.get("acts_in_s") is not None:
        parts.append(f"acts in {fmt_duration(round(doc['acts_in_s']))} unless ComfyUI is used")
    if doc.get("last_check_age_s") is not None:
        parts.append(f"last check {doc['last_check_age_s']:g}s ago")
    if doc.get("acted"):
        a = doc["acted"]
        parts.append(f"last acted at {a.get('at')}: {a.get('why')}")
    return "; ".join(parts)
