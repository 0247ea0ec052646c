"""The offline simulator: the whole workflow on one machine, with no RunPod account.

``start_simulator`` runs ``autopod.sim.server`` as a detached process and records
its endpoint and a dummy key in ``AUTOPOD_HOME/sim.json``; from then on every
autopod command talks to it (``config.api_credentials``) until ``stop_simulator``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..core.config import sim_state
from ..core.errors import AutopodError, ConfigError, UsageError
from ..core.log import register_secret
from ..core.output import Outcome
from ..core.paths import autopod_home, log_dir, open_private
from ..core.procs import cmdline, terminate_pid
from ..core.state import CorruptState, StateFile, exclusive
from ..core.ui import progress

log = logging.getLogger(__name__)
SERVER_MODULE = "autopod.sim.server"


def _state() -> StateFile:
    return sim_state()


def _ours(pid: int) -> bool:
    """True only for a live simulator server process (never signal a recycled pid)."""
    return SERVER_MODULE in cmdline(pid)


def _sim_root() -> Path:
    return autopod_home() / "sim"


def _servers_of_this_home() -> list[int]:
    """Simulator servers started for this AUTOPOD_HOME (``--root <home>/sim``), found without sim.json."""
    import psutil

    root = str(_sim_root())
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if SERVER_MODULE in cmd and "--root" in cmd and cmd[cmd.index("--root") + 1:][:1] == [root]:
            found.append(int(p.info["pid"]))
    return found


def _endpoint_of(pid: int) -> tuple[str, str] | None:
    """(url, key) of a running server, read from the process itself: its listening port and the key
    it was started with (its environment, readable only by the same user)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        key = proc.environ().get("AUTOPOD_SIM_API_KEY")
        ports = [c.laddr.port for c in proc.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.ip == "127.0.0.1"]
    except (psutil.Error, OSError):
        return None
    for port in ports:  # the API port answers /_sim/world; pods' ports belong to child processes
        try:
            _control(f"http://127.0.0.1:{port}", key or "", timeout=2.0)
            return f"http://127.0.0.1:{port}", key or ""
        except Exception:
            continue
    return None


def _control(url: str, key: str, method: str = "GET", body: dict | None = None, timeout: float = 5.0) -> Any:
    import requests

    r = requests.request(method, f"{url}/_sim/world", json=body, timeout=timeout,
                         headers={"Authorization": f"Bearer {key}"})
    r.raise_for_status()
    return r.json()


def load_world_file(path: str) -> dict[str, Any]:
    """A YAML or JSON merge-patch over the default world (stock, volumes, data centers, settings).

    Read with the inventory's strict reader: aliases, duplicate keys and non-UTF-8 text are errors."""
    from ..core.inventory import load_yaml_document

    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{p}: cannot read the simulator world: no such file")
    data = load_yaml_document(p, "simulator world")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the simulator world must be a mapping")
    unknown = set(data) - {"settings", "gpu_types", "data_centers", "network_volumes", "user", "seed"}
    if unknown:
        raise ConfigError(f"{p}: unknown keys in the simulator world: {', '.join(sorted(unknown))}")
    return data


def fault_settings(*, latency: float | None = None, fail_every: int | None = None, hang_every: int | None = None,
                   never_ready: bool | None = None, boot_seconds: float | None = None,
                   reject_key: bool | None = None, graphql_retired: bool | None = None,
                   graphql_retired_status: str | None = None, cold_start: float | None = None) -> dict[str, Any]:
    """The stand-in's fault settings from sim.start's flags (None: leave as is)."""
    s: dict[str, Any] = {}
    if latency is not None:
        if latency < 0:
            raise UsageError("--latency must be >= 0")
        s["latency_s"] = latency
    if fail_every is not None:
        if fail_every < 0 or fail_every == 1:
            raise UsageError("--fail-every must be 0 (off) or >= 2: every call failing leaves nothing to retry")
        s["fail_every"] = fail_every
    if hang_every is not None:
        if hang_every < 0 or hang_every == 1:
            raise UsageError("--hang-every must be 0 (off) or >= 2")
        s["hang_every"] = hang_every
    if never_ready is not None:
        s["never_ready"] = never_ready
    if reject_key is not None:
        s["reject_key"] = reject_key
    if graphql_retired is not None:
        s["graphql_retired"] = graphql_retired
    if graphql_retired_status is not None:
        from .runpod_standin import GRAPHQL_RETIRED_STATUSES

        choices = [str(n) for n in GRAPHQL_RETIRED_STATUSES]
        if graphql_retired_status not in choices:
            raise UsageError(f"--graphql-retired-status must be {', '.join(choices)}, got {graphql_retired_status!r}")
        s["graphql_retired"], s["graphql_retired_status"] = True, int(graphql_retired_status)
    if boot_seconds is not None:
        s["boot_seconds"] = boot_seconds
    if cold_start is not None:
        s["sls_cold_start_s"] = cold_start
    return s


def endpoint_base_url(base_url: str) -> str:
    """The Serverless job API on the simulator: the value for ``RUNPOD_ENDPOINT_BASE_URL`` (RunPod's SDK and
    autopod read it), ``<url>/v2/{endpoint_id}/run`` and the rest on the same server."""
    return base_url.rstrip("/") + "/v2"


def simulator_status() -> dict[str, Any]:
    """{"running": bool, "url", "pid", "pods", "volumes", "settings"} (no secrets)."""
    data = _state().read()
    if not data.get("base_url"):
        return {"running": False}
    doc: dict[str, Any] = {"running": False, "url": data["base_url"], "pid": data.get("pid"),
                           "endpoint_base_url": endpoint_base_url(data["base_url"])}
    if not _ours(int(data.get("pid") or 0)):
        doc["problem"] = "the simulator process is gone (run sim.stop, then sim.start)"
        return doc
    try:
        world = _control(data["base_url"], data["api_key"])
    except Exception as e:
        doc["problem"] = f"the simulator does not answer: {type(e).__name__}"
        return doc
    from .runpod_standin import DEFAULT_SETTINGS

    settings = world.get("settings", {})
    faults = {k: v for k, v in settings.items() if DEFAULT_SETTINGS.get(k) != v}
    comfy_drop = _read_comfy_faults(Path(data.get("root") or _sim_root())).get("ws_drop_after")
    if comfy_drop:
        faults["comfy_ws_drop"] = comfy_drop
    doc.update(running=True, settings=settings, faults=faults, hub=data.get("hub"),
               pods=[{"id": pid, "name": p.get("name"), "status": p.get("desiredStatus")}
                     for pid, p in (world.get("pods") or {}).items()],
               volumes=[{"id": vid, "name": v.get("name"), "size_gb": v.get("size"), "datacenter": v.get("dataCenterId")}
                        for vid, v in (world.get("network_volumes") or {}).items()],
               endpoints=[{"id": eid, "name": e.get("name"), "workers_min": (e.get("workers") or {}).get("min"),
                           "workers_max": (e.get("workers") or {}).get("max")}
                          for eid, e in (world.get("endpoints") or {}).items()])
    return doc


def start_simulator(*, world_file: str | None = None, settings: dict[str, Any] | None = None,
                    comfy_ready_after: float = 3.0, comfy_command: str | None = None,
                    ssh_server: str = "auto", timeout: float = 30.0, comfy_ws_drop: int | None = None) -> Outcome:
    settings = settings or {}
    if ssh_server not in ("auto", "openssh", "python"):
        raise UsageError(f"--ssh-server must be auto, openssh or python, not {ssh_server!r}")
    if comfy_ws_drop is not None and comfy_ws_drop < 0:
        raise UsageError("--comfy-ws-drop must be 0 (off) or more")
    # Two sim.start at once must not start two servers, one of them unrecorded.
    with exclusive("sim", "start", timeout=timeout + 30, what="start the simulator"):
        return _start_locked(world_file, settings, comfy_ready_after, comfy_command, ssh_server, timeout,
                             comfy_ws_drop)


def _comfy_faults(root: Path, comfy_ws_drop: int | None) -> None:
    """The pods' ComfyUI fault settings file: stand-ins read it as they start (see sim.backend)."""
    from .backend import comfy_faults_file

    path = comfy_faults_file(root)
    if comfy_ws_drop is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps({"ws_drop_after": comfy_ws_drop}))


def _read_comfy_faults(root: Path) -> dict[str, Any]:
    from .backend import comfy_faults_file

    try:
        doc = json.loads(comfy_faults_file(root).read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _push_comfy_faults(world: dict[str, Any], faults: dict[str, Any]) -> int:
    """Apply ComfyUI faults to the running pods' stand-ins now; returns how many took them."""
    import requests

    from .backend import COMFY_ADDRESS_ENV

    done = 0
    for pod in (world.get("pods") or {}).values():
        env = dict(str(e).partition("=")[::2] for e in pod.get("env") or [])
        address = env.get(COMFY_ADDRESS_ENV)
        if pod.get("desiredStatus") != "RUNNING" or not address:
            continue
        try:
            requests.post(f"http://{address}/_sim/faults", json=faults, timeout=3).raise_for_status()
            done += 1
        except requests.RequestException:  # not listening yet: it reads the faults file when it starts
            pass
    return done


def _start_locked(world_file: str | None, settings: dict[str, Any], comfy_ready_after: float,
                  comfy_command: str | None, ssh_server: str, timeout: float,
                  comfy_ws_drop: int | None = None) -> Outcome:
    current = simulator_status()
    if current.get("running"):
        data = _state().read()
        register_secret(data["api_key"])
        if settings or comfy_ws_drop is not None:
            changes = dict(settings)
            if settings:
                _control(data["base_url"], data["api_key"], "POST", {"settings": settings})
            if comfy_ws_drop is not None:
                _comfy_faults(Path(data.get("root") or _sim_root()), comfy_ws_drop)
                _push_comfy_faults(_control(data["base_url"], data["api_key"]), {"ws_drop_after": comfy_ws_drop})
                changes["comfy_ws_drop"] = comfy_ws_drop
            return Outcome(True, f"simulator at {data['base_url']} now runs with {changes}", key="simulator",
                           data=simulator_status())
        return Outcome(False, f"simulator already running at {data['base_url']}", key="simulator", data=current)
    if current.get("url"):  # a dead one: its record goes, nothing else is touched
        with _state().update() as d:
            d.clear()

    root = _sim_root()
    root.mkdir(exist_ok=True)
    _comfy_faults(root, comfy_ws_drop)  # a fresh simulator starts from its own flags, not an old file
    world: dict[str, Any] | None = None
    if world_file or settings:
        from .runpod_standin import default_world, merge_patch

        world = default_world()
        if world_file:
            merge_patch(world, load_world_file(world_file))
        merge_patch(world, {"settings": settings})
    argv = [sys.executable, "-m", SERVER_MODULE, "--root", str(root), "--ssh-server", ssh_server,
            "--comfy-ready-after", str(comfy_ready_after)]
    if world is not None:
        wf = root / "world.json"
        wf.write_text(json.dumps(world))
        argv += ["--world", str(wf)]
    if comfy_command:
        argv += ["--comfy-command", comfy_command]
    if comfy_ws_drop:
        argv += ["--comfy-ws-drop", str(comfy_ws_drop)]
    api_key = "sim-" + secrets.token_hex(16)
    register_secret(api_key)
    progress("starting the offline simulator")
    logf = os.fdopen(open_private(log_dir() / "sim-server.log"), "ab")
    try:
        # A new session: the simulator outlives the shell that started it.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf,
                                start_new_session=True, close_fds=True, cwd="/",
                                env={**os.environ, "AUTOPOD_SIM_API_KEY": api_key})
    finally:
        logf.close()
    line = _read_line(proc, timeout)
    try:
        info = json.loads(line)
    except ValueError:
        proc.kill()
        raise AutopodError(f"the simulator did not start (see {log_dir() / 'sim-server.log'})") from None
    proc.stdout.close()  # type: ignore[union-attr]
    with _state().update() as d:
        d.update(base_url=info["url"], api_key=api_key, pid=proc.pid, ssh_user=getpass.getuser(),
                 started_at=time.time(), root=str(root), hub=info.get("hub"))
    return Outcome(True, f"simulator running at {info['url']}; autopod uses it until `autopod sim.stop`; "
                         f"Serverless jobs at RUNPOD_ENDPOINT_BASE_URL={endpoint_base_url(info['url'])}",
                   key="simulator", data=simulator_status())


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
    if not sel.select(timeout):
        proc.kill()
        raise AutopodError(f"the simulator did not start within {timeout:.0f}s (see {log_dir() / 'sim-server.log'})")
    return proc.stdout.readline().decode()  # type: ignore[union-attr]


def stop_simulator(timeout: float = 20.0) -> Outcome:
    """Stop the simulator and its pods. Works from sim.json, and without it: a missing or corrupt
    record must not leave a simulator and its pods running with no way to stop them."""
    corrupt: CorruptState | None = None
    try:
        data = _state().read()
    except CorruptState as e:
        data, corrupt = {}, e
    pid = int(data.get("pid") or 0)
    servers = [pid] if _ours(pid) else []
    servers += [p for p in _servers_of_this_home() if p not in servers]
    if not servers and not data.get("base_url") and corrupt is None:
        return Outcome(False, "simulator not running")
    pod_count = 0
    for server in servers:
        if server == pid and data.get("base_url"):
            endpoint: tuple[str, str] | None = (data["base_url"], data["api_key"])
        else:
            endpoint = _endpoint_of(server)
        pod_ids: list[str] = []
        if endpoint is not None:
            try:
                pod_ids = list((_control(*endpoint).get("pods") or {}))
            except Exception:
                pass
        _stop_tunnels(pod_ids)
        pod_count += len(pod_ids)
        terminate_pid(server, timeout, on_kill=lambda s=server: log.warning(
            "simulator %d did not stop in %.0fs; killing it", s, timeout))
    msg = f"simulator stopped ({pod_count} simulated pods gone)"
    if corrupt is not None:
        backup = _state().set_aside()
        msg += f"; its corrupt record {corrupt.path} was set aside" + (f" as {backup}" if backup else "")
    else:
        with _state().update() as d:
            d.clear()
    return Outcome(True, msg)


def _stop_tunnels(pod_ids: list[str]) -> None:
    if not pod_ids:
        return
    from ..tunnels.manager import stop_tunnel_for

    for pid in pod_ids:
        try:
            stop_tunnel_for(pid)
        except Exception as e:  # a damaged tunnels.json must not keep the simulator running
            log.warning("could not stop the tunnel to simulated pod %s: %s", pid, e)
