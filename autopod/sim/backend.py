"""Simulated pods as real local processes: each running pod has its own SSH server and ComfyUI.

``LocalPodBackend`` plugs into ``RunPodStandin``: when the stand-in starts a pod,
the pod gets an SSH server on a loopback port of its own (OpenSSH's sshd where it
is installed, else the pure-Python one) that authorises the pod's ``PUBLIC_KEY``,
and a ComfyUI (the stand-in, or a real one from ``comfy_command``) that becomes
ready a few seconds later. That port is the pod's public port for 22/tcp, so
autopod reaches ComfyUI through the pod's SSH exactly as on RunPod. The stand-in
executes workflows, with its own nodes; its files live in the pod's folder (comfyui/). Every start
gets a new SSH port, as on RunPod; the host key and ComfyUI's port stay with the
pod, like a container disk.

Like a RunPod pod, every SSH session has ``RUNPOD_POD_ID`` and a ``runpodctl`` on its PATH
whose key may act only on that pod (``autopod.sim.runpodctl``), and ``python3``. So the idle
watchdog (``autopod pod.guard``) runs in a simulated pod unchanged, and stops it through the
stand-in. Stopping a pod ends every process started in it, as stopping a container does.

A network volume is a folder (``volumes/<id>``) that every pod attaching it shares, and outlives
them; its ComfyUI keeps its models there, as the official image does (``runpod-slim/ComfyUI/models``),
so a model one pod pulls is there for the others. Sessions see where the volume really is
(``AUTOPOD_VOLUME_DIR``; on RunPod it is the mount, /workspace) and, while the simulator's model hub
runs, ``HF_ENDPOINT`` and ``CIVITAI_ENDPOINT`` pointing at it, so Hugging Face and Civitai URLs work.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.paths import open_private
from ..core.procs import stop_child
from .comfyui_standin import ComfyUIStandin
from .runpodctl import write_script
from .sshd import LocalSSHD, find_sshd, free_port

log = logging.getLogger(__name__)

# The pod-side ComfyUI address, announced through the pod's env (autopod honours it as the pod's default).
COMFY_ADDRESS_ENV = "AUTOPOD_COMFY_ADDRESS"
# Marks every process started in a simulated pod (its folder), so stopping the pod can end them.
POD_MARKER_ENV = "AUTOPOD_SIM_POD"


def pod_env(pod: dict[str, Any]) -> dict[str, str]:
    env = {}
    for item in pod.get("env") or []:
        k, _, v = str(item).partition("=")
        env[k] = v
    return env


@dataclass
class _Running:
    ssh: Any = None
    comfy: Any = None  # ComfyUIStandin, or a Popen of comfy_command
    extra: list = field(default_factory=list)


class LocalPodBackend:
    def __init__(self, root: Path, *, ssh_server: str = "auto", comfy_ready_after: float = 3.0,
                 comfy_command: str | None = None, comfy_ws_drop_after: int = 0, comfy_sim_nodes: bool = True):
        self.root = Path(root)
        self.ssh_server = ssh_server
        self.comfy_ready_after = comfy_ready_after
        self.comfy_command = comfy_command
        # Every pod's stand-in: its own nodes (AutopodSleep, ...) and the WebSocket fault. A running simulator
        # changes the fault through comfy_faults_file (read by stand-ins as they start) and each one's /_sim/faults.
        self.comfy_ws_drop_after = comfy_ws_drop_after
        self.comfy_sim_nodes = comfy_sim_nodes
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self.api_url = ""  # the stand-in's, for each pod's runpodctl (``attach``)
        self.api_key = ""
        self.hub_endpoints: dict[str, str] = {}  # the model hub stand-in's, for each pod's environment

    def attach(self, url: str, api_key: str) -> None:
        """The stand-in this backend serves: each pod's runpodctl calls it."""
        self.api_url, self.api_key = url, api_key

    # -- PodBackend ----------------------------------------------------------------------------
    def start(self, pod: dict) -> dict:
        self.stop(pod)
        workdir = self.root / pod["id"]
        workdir.mkdir(parents=True, exist_ok=True)
        env = pod_env(pod)
        run = _Running()
        result: dict[str, Any] = {"ip": "127.0.0.1", "ports": {}}
        volume = self.volume_dir(pod.get("networkVolumeId"))
        # Like RunPod's images: sshd only when PUBLIC_KEY is set.
        if env.get("PUBLIC_KEY", "").strip():
            session = {**self._session_env(pod["id"], workdir), **self._volume_env(workdir, volume)}
            run.ssh = self._ssh_server(workdir, env["PUBLIC_KEY"], session).start()
            result["ports"][22] = run.ssh.port
        comfy_port = self._comfy_port(workdir)
        run.comfy = self._start_comfy(comfy_port, workdir, volume)
        result["env"] = {COMFY_ADDRESS_ENV: f"127.0.0.1:{comfy_port}"}
        with self._lock:
            self._running[pod["id"]] = run
        log.info("pod %s: ssh on 127.0.0.1:%s, ComfyUI on 127.0.0.1:%d", pod["id"],
                 result["ports"].get(22, "-"), comfy_port)
        return result

    def stop(self, pod: dict) -> None:
        with self._lock:
            run = self._running.pop(pod["id"], None)
        if run is None:
            return
        for part in (run.ssh, run.comfy):
            _halt(part)
        ended = end_pod_processes(self.root / pod["id"])
        log.info("pod %s: processes stopped%s", pod["id"], f" ({ended} started in the pod)" if ended else "")

    def terminate(self, pod: dict) -> None:
        self.stop(pod)
        shutil.rmtree(self.root / pod["id"], ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            ids = list(self._running)
        for pid in ids:
            self.stop({"id": pid})

    # -- parts ---------------------------------------------------------------------------------
    def _session_env(self, pod_id: str, workdir: Path) -> dict[str, str]:
        """What every SSH session in the pod sees: the pod's id, its runpodctl and python3 first on
        PATH, where the watchdog keeps its files (the pod's folder outlives a stop, like /workspace)."""
        bin_dir = workdir / "bin"
        settings = workdir / "runpodctl.json"
        fd = os.open(settings, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"url": self.api_url, "key": self.api_key, "pod_id": pod_id}, f)
        write_script(bin_dir, settings, sys.executable)
        py = bin_dir / "python3"
        py.write_text(f"#!/bin/sh\nexec '{sys.executable}' \"$@\"\n")
        py.chmod(0o755)
        return {"RUNPOD_POD_ID": pod_id, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                "AUTOPOD_GUARD_DIR": str(workdir / "guard"), POD_MARKER_ENV: str(workdir)}

    def volume_dir(self, volume_id: str | None) -> Path | None:
        """The folder that is network volume ``volume_id`` (made on first use; it outlives its pods)."""
        if not volume_id:
            return None
        d = self.root / "volumes" / volume_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _volume_env(self, workdir: Path, volume: Path | None) -> dict[str, str]:
        env = {k: v for k, v in (("HF_ENDPOINT", self.hub_endpoints.get("hf")),
                                 ("CIVITAI_ENDPOINT", self.hub_endpoints.get("civitai"))) if v}
        if volume is not None:
            env["AUTOPOD_VOLUME_DIR"] = str(volume)
        else:  # no volume: model pulls keep their records on the pod's own disk
            env["AUTOPOD_MODELS_DIR"] = str(workdir / "models-state")
        return env

    def _ssh_server(self, workdir: Path, authorized_keys: str, env: dict[str, str]) -> Any:
        kind = self.ssh_server
        if kind == "auto":
            kind = "openssh" if find_sshd() else "python"
        if kind == "openssh":
            return LocalSSHD(workdir / "ssh", authorized_keys, env=env)
        from .pyssh import PySSHD, available

        if not available():
            raise RuntimeError("no SSH server for simulated pods: install openssh-server, "
                               "or pip install 'autopod[sim-ssh]' for the pure-Python one")
        return PySSHD(workdir / "ssh", authorized_keys, env=env)

    @staticmethod
    def _comfy_port(workdir: Path) -> int:
        f = workdir / "comfy_port"
        if f.exists():
            return int(f.read_text())
        port = free_port()
        f.write_text(str(port))
        return port

    def _start_comfy(self, port: int, workdir: Path, volume: Path | None = None) -> Any:
        if self.comfy_command:
            # A real ComfyUI (or anything else) replaces the stand-in: `{port}` and `{host}` are filled in.
            argv = [a.format(port=port, host="127.0.0.1") for a in shlex.split(self.comfy_command)]
            out = os.fdopen(open_private(workdir / "comfyui.log"), "ab")
            try:
                return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=workdir, close_fds=True)
            finally:
                out.close()
        return ComfyUIStandin(port=port, ready_after=self.comfy_ready_after, root=workdir / "comfyui",
                              sim_nodes=self.comfy_sim_nodes, ws_drop_after=self.comfy_ws_drop_after,
                              faults_file=self.comfy_faults_file,
                              models_dir=volume / "runpod-slim" / "ComfyUI" / "models" if volume else None).start()

    @property
    def comfy_faults_file(self) -> Path:
        return comfy_faults_file(self.root)


def comfy_faults_file(root: Path) -> Path:
    """Where a running simulator keeps its ComfyUI fault settings (JSON, like POST /_sim/faults)."""
    return Path(root) / "comfy-faults.json"


def end_pod_processes(workdir: Path) -> int:
    """End every process started in the simulated pod at ``workdir`` (SIGTERM, then SIGKILL), as
    stopping a container ends everything in it. Returns how many there were."""
    import psutil

    marker = str(workdir)
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(POD_MARKER_ENV) == marker:
                found.append(proc)
        except (psutil.Error, OSError):
            continue  # gone, or not ours to read
    for proc in found:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(found, timeout=3)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(found)


def _halt(part: Any) -> None:
    if part is None:
        return
    try:
        if isinstance(part, subprocess.Popen):
            stop_child(part, timeout=10)
        else:
            part.stop()
    except Exception as e:  # one stuck part must not keep the others running
        log.warning("stopping %r failed: %s", part, e)
