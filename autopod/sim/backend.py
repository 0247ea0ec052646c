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
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.procs import stop_child
from .comfyui_standin import ComfyUIStandin
from .sshd import LocalSSHD, find_sshd, free_port

log = logging.getLogger(__name__)

# The pod-side ComfyUI address, announced through the pod's env (autopod honours it as the pod's default).
COMFY_ADDRESS_ENV = "AUTOPOD_COMFY_ADDRESS"


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

    # -- PodBackend ----------------------------------------------------------------------------
    def start(self, pod: dict) -> dict:
        self.stop(pod)
        workdir = self.root / pod["id"]
        workdir.mkdir(parents=True, exist_ok=True)
        env = pod_env(pod)
        run = _Running()
        result: dict[str, Any] = {"ip": "127.0.0.1", "ports": {}}
        # Like RunPod's images: sshd only when PUBLIC_KEY is set.
        if env.get("PUBLIC_KEY", "").strip():
            run.ssh = self._ssh_server(workdir, env["PUBLIC_KEY"]).start()
            result["ports"][22] = run.ssh.port
        comfy_port = self._comfy_port(workdir)
        run.comfy = self._start_comfy(comfy_port, workdir)
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
        log.info("pod %s: processes stopped", pod["id"])

    def terminate(self, pod: dict) -> None:
        self.stop(pod)
        shutil.rmtree(self.root / pod["id"], ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            ids = list(self._running)
        for pid in ids:
            self.stop({"id": pid})

    # -- parts ---------------------------------------------------------------------------------
    def _ssh_server(self, workdir: Path, authorized_keys: str) -> Any:
        kind = self.ssh_server
        if kind == "auto":
            kind = "openssh" if find_sshd() else "python"
        if kind == "openssh":
            return LocalSSHD(workdir / "ssh", authorized_keys)
        from .pyssh import PySSHD, available

        if not available():
            raise RuntimeError("no SSH server for simulated pods: install openssh-server, "
                               "or pip install 'autopod[sim-ssh]' for the pure-Python one")
        return PySSHD(workdir / "ssh", authorized_keys)

    @staticmethod
    def _comfy_port(workdir: Path) -> int:
        f = workdir / "comfy_port"
        if f.exists():
            return int(f.read_text())
        port = free_port()
        f.write_text(str(port))
        return port

    def _start_comfy(self, port: int, workdir: Path) -> Any:
        if self.comfy_command:
            # A real ComfyUI (or anything else) replaces the stand-in: `{port}` and `{host}` are filled in.
            argv = [a.format(port=port, host="127.0.0.1") for a in shlex.split(self.comfy_command)]
            out = (workdir / "comfyui.log").open("ab")
            try:
                return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=workdir, close_fds=True)
            finally:
                out.close()
        return ComfyUIStandin(port=port, ready_after=self.comfy_ready_after, root=workdir / "comfyui",
                              sim_nodes=self.comfy_sim_nodes, ws_drop_after=self.comfy_ws_drop_after,
                              faults_file=self.comfy_faults_file).start()

    @property
    def comfy_faults_file(self) -> Path:
        return comfy_faults_file(self.root)


def comfy_faults_file(root: Path) -> Path:
    """Where a running simulator keeps its ComfyUI fault settings (JSON, like POST /_sim/faults)."""
    return Path(root) / "comfy-faults.json"


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
