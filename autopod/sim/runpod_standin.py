"""A local stand-in for the RunPod GraphQL API.

It answers the queries and mutations that the ``runpod`` SDK 1.12.0 and autopod
send, with RunPod's response shapes and error texts, from an in-memory account
(the *world*: GPU types, data centers with stock, network volumes, pods).
Point the SDK at it with ``RUNPOD_API_BASE_URL=<url>``; the SDK appends
``/graphql``.

Besides ``POST /graphql`` it serves a small control API under ``/_sim/``
(same bearer key): ``GET /_sim/world`` (the whole world), ``POST /_sim/world``
(a JSON merge-patch, e.g. ``{"settings": {"fail_every": 3}}`` or
``{"data_centers": {"EU-RO-1": {"stock": {"NVIDIA RTX A40": 0}}}}``),
``GET /_sim/requests`` (counts of executed operations) and
``DELETE /_sim/requests`` (reset them).

RunPod Serverless lives in the same world (``autopod.sim.serverless``): endpoints on REST v2
(``/v2/serverless``) and their job API under ``/v2/{endpoint_id}/`` (``RUNPOD_ENDPOINT_BASE_URL=<url>/v2``),
with its hooks under ``/_sim/serverless``.

Run it on its own with
``python -m autopod.sim.runpod_standin --port 0 --world FILE.json --api-key K``:
it prints one line ``{"url": ...}`` once it listens and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from graphql import GraphQLError, build_schema, graphql_sync, parse

from .runpod_facts import (  # noqa: F401 (tests and the REST routes name them from here too)
    NO_CAPACITY,
    NO_DATA_CENTER,
    NOT_ENOUGH_GPUS,
    SOMETHING_WRONG,
    ApiError,
    _stock_status,
)
from graphql.language import OperationDefinitionNode

from .runpod_facts import POOLS, PRICE_PER_S
from .serverless import JOB_OPS, Serverless
from .serverless import SETTINGS as SERVERLESS_SETTINGS

log = logging.getLogger(__name__)

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2 autopod-standin\r\n"
TIMER_TICK_S = 0.25  # how often the stand-in enforces stopAfter/terminateAfter

SDL = """
scalar Void

enum PodStatus { CREATED RUNNING RESTARTING EXITED PAUSED DEAD TERMINATED }
enum PodType { INTERRUPTABLE RESERVED BID BACKGROUND }
enum CloudTypeEnum { ALL SECURE COMMUNITY }
enum ComputeType { GPU CPU }

type Query {
  myself: User
  pod(input: PodFilter): Pod
  gpuTypes(input: GpuTypeFilter): [GpuType]
  dataCenters: [DataCenter]
}

type Mutation {
  podFindAndDeployOnDemand(input: PodFindAndDeployOnDemandInput): Pod
  deployCpuPod(input: DeployCpuPodInput): Pod
  podStop(input: PodStopInput): Pod
  podResume(input: PodResumeInput): Pod
  podTerminate(input: PodTerminateInput): Void
  createNetworkVolume(input: CreateNetworkVolumeInput): NetworkVolume
  deleteNetworkVolume(input: DeleteNetworkVolumeInput): Void
  updateUserSettings(input: UpdateUserSettingsInput): User
}

type User {
  id: String
  pubKey: String
  pods: [Pod]
  networkVolumes: [NetworkVolume]
}

type Pod {
  id: String!
  name: String
  desiredStatus: PodStatus
  costPerHr: Float
  adjustedCostPerHr: Float
  gpuCount: Int
  vcpuCount: Float
  memoryInGb: Float
  containerDiskInGb: Int
  volumeInGb: Float
  volumeMountPath: String
  imageName: String
  dockerArgs: String
  dockerId: String
  env: [String]
  ports: String
  port: Int
  podType: PodType
  machineId: String
  machine: PodMachineInfo
  runtime: PodRuntime
  lastStatusChange: String
  uptimeSeconds: Int
  createdAt: String
  lastStartedAt: String
  templateId: String
  networkVolumeId: String
  networkVolume: NetworkVolume
  locked: Boolean
}

type PodMachineInfo {
  podHostId: String
  gpuDisplayName: String
  gpuTypeId: String
  dataCenterId: String
  location: String
  secureCloud: Boolean
  supportPublicIp: Boolean
}

type PodRuntime {
  uptimeInSeconds: Int
  ports: [PodRuntimePort]
  gpus: [PodRuntimeGpu]
  container: PodRuntimeContainer
}

type PodRuntimePort {
  ip: String
  isIpPublic: Boolean
  privatePort: Int
  publicPort: Int
  type: String
}

type PodRuntimeGpu {
  id: String
  gpuUtilPercent: Float
  memoryUtilPercent: Float
}

type PodRuntimeContainer {
  cpuPercent: Float
  memoryPercent: Float
}

type GpuType {
  id: String!
  displayName: String
  manufacturer: String
  memoryInGb: Int
  cudaCores: Int
  maxGpuCount: Int
  secureCloud: Boolean
  communityCloud: Boolean
  securePrice: Float
  communityPrice: Float
  secureSpotPrice: Float
  communitySpotPrice: Float
  oneWeekPrice: Float
  oneMonthPrice: Float
  threeMonthPrice: Float
  lowestPrice(input: GpuLowestPriceInput): LowestPrice
}

type LowestPrice {
  gpuName: String
  gpuTypeId: String
  stockStatus: String
  uninterruptablePrice: Float
  minimumBidPrice: Float
  availableGpuCounts: [Int]
  maxUnreservedGpuCount: Int
  minMemory: Int
  minVcpu: Int
}

type DataCenter {
  id: String!
  name: String
  location: String
  storageSupport: Boolean
  listed: Boolean
  gpuAvailability: [GpuAvailability]
}

type GpuAvailability {
  gpuTypeId: String
  displayName: String
  gpuTypeDisplayName: String
  stockStatus: String
  available: Boolean
}

type NetworkVolume {
  id: String!
  name: String
  size: Int
  dataCenterId: String
  dataCenter: DataCenter
}

input PodFilter { podId: String! }
input GpuTypeFilter { id: String, ids: [String] }

input GpuLowestPriceInput {
  gpuCount: Int
  secureCloud: Boolean
  dataCenterId: String
  countryCode: String
  minMemoryInGb: Int
  minVcpuCount: Int
  minDisk: Int
  totalDisk: Int
  supportPublicIp: Boolean
  minDownload: Int
  minUpload: Int
  allowedCudaVersions: [String]
}

input EnvironmentVariableInput { key: String!, value: String }

input PodFindAndDeployOnDemandInput {
  name: String
  imageName: String
  templateId: String
  cloudType: CloudTypeEnum
  computeType: ComputeType
  gpuTypeId: String
  gpuTypeIdList: [String]
  gpuCount: Int
  supportPublicIp: Boolean
  startSsh: Boolean
  startJupyter: Boolean
  dataCenterId: String
  countryCode: String
  containerDiskInGb: Int
  volumeInGb: Int
  volumeMountPath: String
  volumeKey: String
  networkVolumeId: String
  minVcpuCount: Int
  minMemoryInGb: Int
  minDisk: Int
  minDownload: Int
  minUpload: Int
  dockerArgs: String
  ports: String
  port: Int
  env: [EnvironmentVariableInput]
  allowedCudaVersions: [String]
  cudaVersion: String
  instanceIds: [String]
  deployCost: Float
  stopAfter: String
  terminateAfter: String
}

input DeployCpuPodInput {
  name: String
  imageName: String
  templateId: String
  cloudType: CloudTypeEnum
  startSsh: Boolean
  instanceId: String
  dataCenterId: String
  countryCode: String
  containerDiskInGb: Int
  volumeInGb: Int
  volumeMountPath: String
  networkVolumeId: String
  minDownload: Int
  minUpload: Int
  dockerArgs: String
  ports: String
  env: [EnvironmentVariableInput]
  deployCost: Float
}

input PodStopInput { podId: String!, incrementVersion: Boolean }
input PodResumeInput { podId: String!, gpuCount: Int, syncMachine: Boolean, computeType: ComputeType }
input PodTerminateInput { podId: String! }
input CreateNetworkVolumeInput { name: String!, size: Int!, dataCenterId: String! }
input DeleteNetworkVolumeInput { id: String! }
input UpdateUserSettingsInput { pubKey: String }
"""

DEFAULT_SETTINGS: dict[str, Any] = {
    "boot_reads": 1,          # reads of a new/resumed pod that still show runtime: null
    "boot_seconds": 0.0,      # ... and seconds after (re)start before runtime appears
    "never_ready": False,     # keep every pod's runtime null (fault injection)
    "latency_s": 0.0,         # sleep before every GraphQL answer
    "fail_every": 0,          # every Nth GraphQL request answers fail_status with a non-JSON body
    "fail_status": 502,
    "fail_after_execute": False,  # the failing request still takes effect (a lost response)
    "hang_every": 0,          # every Nth GraphQL request sleeps hang_s, then answers 504
    "hang_s": 35.0,           # past the SDK's 30 s timeout
    "reject_key": False,      # answer 401 to every GraphQL request
    "graphql_retired": False,  # answer GraphQL as retired, as after RunPod retires it (REST v2 still works)
    "graphql_retired_status": 410,  # ... with 410 Gone, a 404 page, or a 200 whose GraphQL errors say so
    **SERVERLESS_SETTINGS,    # endpoints: cold starts, retention, time scale, payload limits (sim.serverless)
}
GRAPHQL_RETIRED_STATUSES = (410, 404, 200)
REST_ID_RE = re.compile(r"/v2/(pods|network-volumes|serverless)/[^/]+")  # request counts name routes, not ids
REST_HEADS = {"pods", "network-volumes", "catalog", "serverless", "templates", "billing"}  # else /v2/{endpoint}/...
GRAPHQL_RETIRED = ("The GraphQL API has been retired. Use the REST API v2 at https://api.runpod.io/v2 "
                   "(https://docs.runpod.io/api-reference).")

# id, displayName, memoryInGb, cudaCores, maxGpuCount, secure $/h, community $/h (None: not offered)
_GPUS = [
    ("NVIDIA RTX A40", "RTX A40", 48, 10752, 8, 0.40, 0.35),
    ("NVIDIA RTX A6000", "RTX A6000", 48, 10752, 8, 0.49, 0.33),
    ("NVIDIA RTX A5000", "RTX A5000", 24, 8192, 8, 0.27, 0.16),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 16384, 8, 0.69, 0.34),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", 24, 10496, 8, 0.43, 0.22),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 6912, 8, 1.64, 1.19),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 16896, 8, 2.69, None),
]

# data center id -> (location, secure cloud, free GPUs by type)
_DATA_CENTERS = {
    "EU-RO-1": ("Romania", True, {"NVIDIA RTX A40": 6, "NVIDIA RTX A6000": 4, "NVIDIA RTX A5000": 8,
                                  "NVIDIA GeForce RTX 4090": 10, "NVIDIA GeForce RTX 3090": 0,
                                  "NVIDIA A100 80GB PCIe": 2, "NVIDIA H100 80GB HBM3": 0}),
    "US-KS-2": ("United States", True, {"NVIDIA RTX A40": 10, "NVIDIA RTX A6000": 2, "NVIDIA RTX A5000": 4,
                                        "NVIDIA GeForce RTX 3090": 3, "NVIDIA A100 80GB PCIe": 4,
                                        "NVIDIA H100 80GB HBM3": 2}),
    "EU-SE-1": ("Sweden", True, {"NVIDIA RTX A40": 2, "NVIDIA RTX A6000": 1, "NVIDIA GeForce RTX 4090": 6,
                                 "NVIDIA GeForce RTX 3090": 12, "NVIDIA A100 80GB PCIe": 0,
                                 "NVIDIA H100 80GB HBM3": 8}),
    # Community Cloud "regions" are country codes, not Secure Cloud data centers.
    "CZ": ("Czech Republic", False, {"NVIDIA GeForce RTX 3090": 16, "NVIDIA GeForce RTX 4090": 12,
                                     "NVIDIA RTX A5000": 6, "NVIDIA RTX A40": 2}),
}

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


# --- world -----------------------------------------------------------------


def _derive(seed: Any, kind: str, n: int, length: int, alphabet: str = _ALNUM) -> str:
    digest = hashlib.sha256(f"{seed}/{kind}/{n}".encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


def _fake_pubkey(seed: Any) -> str:
    raw = hashlib.sha256(f"{seed}/pubkey".encode()).digest()
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + raw
    return "ssh-ed25519 " + base64.b64encode(blob).decode() + " sim@autopod"


def default_world(seed: int = 1) -> dict[str, Any]:
    """A sensible account: GPU types, stocked data centers, two network volumes, no pods."""
    gpu_types = {}
    for gid, name, mem, cores, maxc, secure, community in _GPUS:
        gpu_types[gid] = {
            "displayName": name, "manufacturer": "Nvidia", "memoryInGb": mem, "cudaCores": cores,
            "maxGpuCount": maxc, "securePrice": secure, "communityPrice": community,
            "secureSpotPrice": round(secure * 0.5, 2),
            "communitySpotPrice": None if community is None else round(community * 0.5, 2),
            "pool": POOLS[gid], "serverlessPrice": round(PRICE_PER_S[POOLS[gid]] * 3600, 4),
        }
    data_centers = {
        dc: {"name": dc, "location": loc, "secureCloud": secure, "stock": dict(stock)}
        for dc, (loc, secure, stock) in _DATA_CENTERS.items()
    }
    world: dict[str, Any] = {
        "seed": seed,
        "settings": dict(DEFAULT_SETTINGS),
        "user": {"id": "user_" + _derive(seed, "user", 0, 24), "pubKey": _fake_pubkey(seed)},
        "gpu_types": gpu_types,
        "data_centers": data_centers,
        "network_volumes": {},
        "pods": {},
        "endpoints": {},
        "counters": {"ids": 0, "fault_clock": 0},
    }
    w = World(world)
    for name, size, dc in (("comfy-models", 100, "EU-RO-1"), ("datasets", 50, "US-KS-2")):
        vid = w.new_id("volume", 10)
        world["network_volumes"][vid] = {"name": name, "size": size, "dataCenterId": dc}
    return world


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: dicts merge, ``null`` deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = merge_patch(target.get(k), v)
    return target


class World:
    """The in-memory account. ``data`` is JSON-able; hold ``lock`` while reading or changing it."""

    def __init__(self, data: dict[str, Any] | None = None):
        base = default_world() if data is None else data
        for key, value in (("settings", {}), ("user", {}), ("gpu_types", {}), ("data_centers", {}),
                           ("network_volumes", {}), ("pods", {}), ("endpoints", {}), ("counters", {})):
            base.setdefault(key, value)
        base.setdefault("seed", 1)
        base["settings"] = {**DEFAULT_SETTINGS, **base["settings"]}
        base["counters"].setdefault("ids", 0)
        base["counters"].setdefault("fault_clock", 0)
        self.data = base
        self.lock = threading.RLock()
        self.requests = _new_request_log()

    # Views on the parts of the world, for tests and the simulator.
    @property
    def settings(self) -> dict[str, Any]:
        return self.data["settings"]

    @property
    def pods(self) -> dict[str, dict[str, Any]]:
        return self.data["pods"]

    @property
    def gpu_types(self) -> dict[str, dict[str, Any]]:
        return self.data["gpu_types"]

    @property
    def data_centers(self) -> dict[str, dict[str, Any]]:
        return self.data["data_centers"]

    @property
    def network_volumes(self) -> dict[str, dict[str, Any]]:
        return self.data["network_volumes"]

    @property
    def user(self) -> dict[str, Any]:
        return self.data["user"]

    def to_dict(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.data)

    def patch(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Apply a merge-patch. Changing ``fail_every``/``hang_every`` restarts the fault count."""
        if not isinstance(doc, dict):
            raise ValueError("a world patch must be a JSON object")
        with self.lock:
            merge_patch(self.data, doc)
            faults = (doc.get("settings") or {}) if isinstance(doc.get("settings"), dict) else {}
            if "fail_every" in faults or "hang_every" in faults:
                self.data["counters"]["fault_clock"] = 0
            return copy.deepcopy(self.data)

    def new_id(self, kind: str, length: int, alphabet: str = _ALNUM) -> str:
        """A fresh id, deterministic given the world's seed and how many ids came before."""
        with self.lock:
            taken = set(self.pods) | set(self.network_volumes)
            while True:
                n = self.data["counters"]["ids"]
                self.data["counters"]["ids"] = n + 1
                new = _derive(self.data["seed"], kind, n, length, alphabet)
                if new not in taken:
                    return new


def _new_request_log() -> dict[str, Any]:
    return {"total": 0, "by_operation": {}, "by_field": {}, "rest": {}, "jobs": {},
            "faults": {"fail": 0, "hang": 0, "unauthorized": 0, "retired": 0}}


# --- pod backends ----------------------------------------------------------


class PodBackend(Protocol):
    """What makes a pod's TCP ports reachable. ``start`` returns
    ``{"ip": "127.0.0.1", "ports": {22: 40123, ...}}``: public ports by private port."""

    def start(self, pod: dict) -> dict: ...  # {"ip", "ports": {private: public}, "env"?: {KEY: value}}

    def stop(self, pod: dict) -> None: ...

    def terminate(self, pod: dict) -> None: ...


class LocalTcpBackend:
    """One real listener on 127.0.0.1:<ephemeral> per ``tcp`` port of a running pod.

    Port 22 greets with an OpenSSH banner and closes, so "the SSH endpoint accepts TCP"
    can be checked for real. Every start binds new ports, as RunPod moves the public port
    on every start.
    """

    def __init__(self) -> None:
        self._listeners: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()

    def start(self, pod: dict) -> dict:
        self.stop(pod)
        ports: dict[int, int] = {}
        socks = []
        for private, kind in parse_ports(pod.get("ports") or ""):
            if kind != "tcp":
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            ports[private] = s.getsockname()[1]
            socks.append(s)
            banner = SSH_BANNER if private == 22 else b""
            threading.Thread(target=self._serve, args=(s, banner), daemon=True,
                             name=f"standin-pod-{pod.get('id')}-{private}").start()
        with self._lock:
            self._listeners[pod["id"]] = socks
        return {"ip": "127.0.0.1", "ports": ports}

    @staticmethod
    def _serve(s: socket.socket, banner: bytes) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return  # closed by stop()
            try:
                if banner:
                    conn.sendall(banner)
            except OSError:
                pass
            finally:
                conn.close()

    def stop(self, pod: dict) -> None:
        with self._lock:
            socks = self._listeners.pop(pod["id"], [])
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the serving thread
            except OSError:
                pass
            s.close()

    def terminate(self, pod: dict) -> None:
        self.stop(pod)

    def close(self) -> None:
        with self._lock:
            ids = list(self._listeners)
        for pid in ids:
            self.stop({"id": pid})


# --- helpers ---------------------------------------------------------------


def parse_ports(spec: str) -> list[tuple[int, str]]:
    """``"8188/http,22/tcp"`` -> ``[(8188, "http"), (22, "tcp")]``; bad entries raise ApiError."""
    out: list[tuple[int, str]] = []
    for part in (spec or "").replace(" ", "").split(","):
        if not part:
            continue
        num, _, kind = part.partition("/")
        kind = (kind or "http").lower()
        if not num.isdigit() or kind not in ("http", "tcp") or not 0 < int(num) < 65536:
            raise ApiError(f"Invalid port specification: {part}")
        if (int(num), kind) not in out:
            out.append((int(num), kind))
    return out


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def _timestamp(value: Any) -> float | None:
    """An ISO 8601 date-time (``Z`` or an offset; naive means UTC) as epoch seconds, else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _js_date(ts: float) -> str:
    # RunPod writes dates the way JavaScript's Date.toString() does.
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)")


def _root_fields(document: Any) -> tuple[str | None, list[str]]:
    for d in document.definitions:
        if isinstance(d, OperationDefinitionNode):
            fields = [s.name.value for s in d.selection_set.selections if hasattr(s, "name")]
            name = d.name.value if d.name else (fields[0] if fields else None)
            return name, fields
    return None, []


# --- the API ---------------------------------------------------------------


class _Api:
    """Resolvers. Every request runs with ``world.lock`` held, so each mutation is atomic."""

    def __init__(self, world: World, backend: PodBackend):
        self.world = world
        self.backend = backend

    # -- shared pieces

    def _now(self) -> float:
        return time.time()

    def _dc(self, dc_id: str | None) -> dict[str, Any] | None:
        return self.world.data_centers.get(dc_id) if dc_id else None

    def _gpu(self, gid: str) -> dict[str, Any] | None:
        return self.world.gpu_types.get(gid)

    def _price(self, gid: str, secure: bool) -> float:
        g = self._gpu(gid) or {}
        return float(g.get("securePrice" if secure else "communityPrice") or 0.0)

    def _take_stock(self, dc_id: str, gid: str, count: int) -> bool:
        stock = self.world.data_centers[dc_id].setdefault("stock", {})
        if int(stock.get(gid, 0)) < count:
            return False
        stock[gid] = int(stock.get(gid, 0)) - count
        return True

    def _return_stock(self, pod: dict[str, Any]) -> None:
        dc = self._dc(pod.get("dataCenterId"))
        if dc is not None and pod.get("gpuTypeId"):
            stock = dc.setdefault("stock", {})
            stock[pod["gpuTypeId"]] = int(stock.get(pod["gpuTypeId"], 0)) + int(pod.get("gpuCount") or 0)

    def _boot(self, pod: dict[str, Any]) -> None:
        """(Re)start a pod's container: new public ports, readiness counted afresh."""
        now = self._now()
        got = self.backend.start(copy.deepcopy(pod)) or {}
        if got.get("env"):
            # A backend can announce facts about the started container (the simulator's ComfyUI address).
            env = [e for e in pod.get("env") or [] if str(e).partition("=")[0] not in got["env"]]
            pod["env"] = env + [f"{k}={v}" for k, v in got["env"].items()]
        pod["public"] = {"ip": got.get("ip") or "127.0.0.1",
                         "ports": {str(k): int(v) for k, v in (got.get("ports") or {}).items()}}
        pod["boots"] = int(pod.get("boots") or 0) + 1
        for private, kind in parse_ports(pod.get("ports") or ""):
            # HTTP ports (and TCP ports a backend leaves out) get a made-up public port that changes per start.
            key = f"{private}/http" if kind == "http" else str(private)
            if key not in pod["public"]["ports"]:
                digest = hashlib.sha256(f"{pod['id']}/{key}/{pod['boots']}".encode()).digest()
                pod["public"]["ports"][key] = 10000 + int.from_bytes(digest[:4], "big") % 50000
        pod["desiredStatus"] = "RUNNING"
        pod["started_ts"] = now
        pod["last_started_ts"] = now
        pod["status_ts"] = now
        pod["lastStatusChange"] = f"Rented by User: {_js_date(now)}"
        pod["reads"] = 0

    def _halt(self, pod: dict[str, Any], how: str) -> None:
        if pod.get("desiredStatus") == "RUNNING":
            self._return_stock(pod)
        (self.backend.terminate if how == "terminate" else self.backend.stop)(copy.deepcopy(pod))
        now = self._now()
        pod["desiredStatus"] = "EXITED"
        pod["public"] = None
        pod["started_ts"] = None
        pod["status_ts"] = now
        pod["lastStatusChange"] = f"Exited by User: {_js_date(now)}"

    def _enforce_deadlines(self) -> None:
        """``stopAfter``/``terminateAfter`` from the create input take effect when the world is read."""
        now = self._now()
        for pid, pod in list(self.world.pods.items()):
            terminate_at, stop_at = _timestamp(pod.get("terminateAfter")), _timestamp(pod.get("stopAfter"))
            if terminate_at is not None and terminate_at <= now:
                self._halt(pod, "terminate")
                del self.world.pods[pid]
            elif stop_at is not None and stop_at <= now and pod.get("desiredStatus") == "RUNNING":
                self._halt(pod, "stop")
                pod["stopAfter"] = None

    # -- views (dicts, with callables for fields that take arguments or count reads)

    def pod_view(self, pod: dict[str, Any]) -> dict[str, Any]:
        gpu = self._gpu(pod.get("gpuTypeId") or "") or {}
        dc = self._dc(pod.get("dataCenterId")) or {}
        running = pod.get("desiredStatus") == "RUNNING"
        started = pod.get("started_ts")
        uptime = int(self._now() - started) if running and started else 0
        cost = round(float(pod.get("costPerGpu") or 0) * int(pod.get("gpuCount") or 0), 4) if running else 0.0
        vol = self.world.network_volumes.get(pod.get("networkVolumeId") or "")
        return {
            **{k: pod.get(k) for k in ("id", "name", "desiredStatus", "gpuCount", "containerDiskInGb",
                                       "volumeInGb", "volumeMountPath", "imageName", "dockerArgs", "ports",
                                       "machineId", "lastStatusChange", "templateId", "networkVolumeId",
                                       "vcpuCount", "memoryInGb")},
            "env": list(pod.get("env") or []),
            "costPerHr": cost,
            "adjustedCostPerHr": cost,
            "dockerId": None,
            "port": None,
            "podType": "RESERVED",
            "locked": False,
            "uptimeSeconds": uptime,
            "createdAt": _iso(pod.get("created_ts")),
            "lastStartedAt": _iso(pod.get("last_started_ts")),
            "networkVolume": self.volume_view(pod["networkVolumeId"], vol) if vol else None,
            "machine": {
                "podHostId": pod.get("podHostId"),
                "gpuDisplayName": gpu.get("displayName"),
                "gpuTypeId": pod.get("gpuTypeId"),
                "dataCenterId": pod.get("dataCenterId"),
                "location": dc.get("location"),
                "secureCloud": bool(dc.get("secureCloud")),
                "supportPublicIp": True,
            },
            "runtime": lambda info: self.runtime(pod),
        }

    def runtime(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        if pod.get("desiredStatus") != "RUNNING" or not pod.get("public"):
            return None
        pod["reads"] = int(pod.get("reads") or 0) + 1
        s = self.world.settings
        if s.get("never_ready") or pod.get("never_ready"):
            return None
        if pod["reads"] <= int(s.get("boot_reads") or 0):
            return None
        if self._now() - (pod.get("started_ts") or 0) < float(s.get("boot_seconds") or 0):
            return None
        pub = pod["public"]
        h = hashlib.sha256(pod["id"].encode()).digest()
        private_ip = f"100.65.{h[0]}.{h[1] % 254 + 1}"
        ports = []
        for private, kind in parse_ports(pod.get("ports") or ""):
            if kind == "tcp":
                ports.append({"ip": pub["ip"], "isIpPublic": True, "privatePort": private,
                              "publicPort": pub["ports"].get(str(private)), "type": "tcp"})
            else:
                ports.append({"ip": private_ip, "isIpPublic": False, "privatePort": private,
                              "publicPort": pub["ports"].get(f"{private}/http"), "type": "http"})
        return {
            "uptimeInSeconds": int(self._now() - (pod.get("started_ts") or self._now())),
            "ports": ports,
            "gpus": [{"id": "GPU-" + _derive(pod["id"], "gpu", i, 8, "0123456789abcdef") + "-standin",
                      "gpuUtilPercent": 0.0, "memoryUtilPercent": 0.0} for i in range(int(pod.get("gpuCount") or 0))],
            "container": {"cpuPercent": 0.0, "memoryPercent": 0.0},
        }

    def volume_view(self, vid: str, vol: dict[str, Any]) -> dict[str, Any]:
        dc_id = vol.get("dataCenterId")
        dc = self._dc(dc_id)
        return {"id": vid, "name": vol.get("name"), "size": vol.get("size"), "dataCenterId": dc_id,
                "dataCenter": self.dc_view(dc_id, dc) if dc else None}

    def dc_view(self, dc_id: str, dc: dict[str, Any]) -> dict[str, Any]:
        avail = []
        for gid, free in (dc.get("stock") or {}).items():
            gpu = self._gpu(gid) or {}
            status = _stock_status(int(free), 1)
            avail.append({"gpuTypeId": gid, "displayName": gpu.get("displayName"),
                          "gpuTypeDisplayName": gpu.get("displayName"), "stockStatus": status,
                          "available": int(free) > 0})
        return {"id": dc_id, "name": dc.get("name") or dc_id, "location": dc.get("location"),
                "storageSupport": bool(dc.get("secureCloud")), "listed": True, "gpuAvailability": avail}

    def gpu_view(self, gid: str, g: dict[str, Any]) -> dict[str, Any]:
        secure, community = g.get("securePrice"), g.get("communityPrice")
        base = secure if secure is not None else community

        def lowest(info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
            inp = input or {}
            count = int(inp.get("gpuCount") or 1)
            want_secure = inp.get("secureCloud")
            free = 0
            for dc_id, dc in self.world.data_centers.items():
                if want_secure is not None and bool(dc.get("secureCloud")) != bool(want_secure):
                    continue
                if inp.get("dataCenterId") and inp["dataCenterId"] != dc_id:
                    continue
                free = max(free, int((dc.get("stock") or {}).get(gid, 0)))
            if want_secure is True:
                price = secure
            elif want_secure is False:
                price = community
            else:
                price = min(p for p in (secure, community, float("inf")) if p is not None)
                price = None if price == float("inf") else price
            top = min(free, int(g.get("maxGpuCount") or 8))
            return {"gpuName": g.get("displayName"), "gpuTypeId": gid,
                    "stockStatus": _stock_status(free, count),
                    "uninterruptablePrice": price, "minimumBidPrice": g.get("communitySpotPrice") or g.get("secureSpotPrice"),
                    "availableGpuCounts": list(range(1, top + 1)), "maxUnreservedGpuCount": top,
                    "minMemory": 31 * count, "minVcpu": 8 * count}

        return {
            "id": gid, **{k: g.get(k) for k in ("displayName", "manufacturer", "memoryInGb", "cudaCores",
                                                 "maxGpuCount", "securePrice", "communityPrice",
                                                 "secureSpotPrice", "communitySpotPrice")},
            "secureCloud": secure is not None, "communityCloud": community is not None,
            "oneWeekPrice": None if base is None else round(base * 0.95, 2),
            "oneMonthPrice": None if base is None else round(base * 0.9, 2),
            "threeMonthPrice": None if base is None else round(base * 0.85, 2),
            "lowestPrice": lowest,
        }

    def user_view(self) -> dict[str, Any]:
        u = self.world.user
        return {"id": u.get("id"), "pubKey": u.get("pubKey"),
                "pods": lambda info: [self.pod_view(p) for p in self.world.pods.values()],
                "networkVolumes": lambda info: [self.volume_view(k, v) for k, v in self.world.network_volumes.items()]}

    # -- queries

    def myself(self, info: Any) -> dict[str, Any]:
        return self.user_view()

    def pod(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any] | None:
        pod = self.world.pods.get((input or {}).get("podId") or "")
        return self.pod_view(pod) if pod else None

    def gpuTypes(self, info: Any, input: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        inp = input or {}
        wanted = set(inp.get("ids") or []) | ({inp["id"]} if inp.get("id") else set())
        return [self.gpu_view(gid, g) for gid, g in self.world.gpu_types.items() if not wanted or gid in wanted]

    def dataCenters(self, info: Any) -> list[dict[str, Any]]:
        return [self.dc_view(k, dc) for k, dc in self.world.data_centers.items() if dc.get("secureCloud")]

    # -- pod mutations

    def podFindAndDeployOnDemand(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
        inp = input or {}
        gid = inp.get("gpuTypeId")
        if not gid and inp.get("gpuTypeIdList"):
            gid = inp["gpuTypeIdList"][0]
        if not gid or gid not in self.world.gpu_types:
            raise ApiError(f"Invalid GPU type: {gid}" if gid else "gpuTypeId is required.")
        if not inp.get("imageName") and not inp.get("templateId"):
            raise ApiError("Either imageName or templateId is required.")
        count = inp.get("gpuCount")
        count = 1 if count is None else int(count)
        if count < 1:
            raise ApiError("gpuCount must be at least 1.")
        cloud = inp.get("cloudType") or "ALL"
        for field in ("stopAfter", "terminateAfter"):
            if inp.get(field) is not None and _timestamp(inp[field]) is None:
                raise ApiError(f"{field} must be an ISO 8601 date-time.")
        ports = parse_ports(inp.get("ports") or "")
        env = [f"{e['key']}={'' if e.get('value') is None else e['value']}" for e in (inp.get("env") or [])]
        if inp.get("startSsh") and self.world.user.get("pubKey") and not any(e.startswith("PUBLIC_KEY=") for e in env):
            env.append(f"PUBLIC_KEY={self.world.user['pubKey']}")  # RunPod injects the account's keys

        wanted_dc = inp.get("dataCenterId")
        vid = inp.get("networkVolumeId")
        if vid:
            vol = self.world.network_volumes.get(vid)
            if vol is None:
                raise ApiError(f"Network volume {vid} not found.")
            if cloud != "SECURE":
                raise ApiError(SOMETHING_WRONG)  # volumes exist only in Secure Cloud
            if wanted_dc and wanted_dc != vol.get("dataCenterId"):
                raise ApiError(f"Network volume {vid} is in data center {vol.get('dataCenterId')}, not {wanted_dc}.")
            wanted_dc = vol.get("dataCenterId")

        g = self.world.gpu_types[gid]
        candidates = []
        for dc_id, dc in self.world.data_centers.items():
            secure = bool(dc.get("secureCloud"))
            if wanted_dc and dc_id != wanted_dc:
                continue
            if (cloud == "SECURE" and not secure) or (cloud == "COMMUNITY" and secure):
                continue
            if g.get("securePrice" if secure else "communityPrice") is None:
                continue
            free = int((dc.get("stock") or {}).get(gid, 0))
            if free >= count and count <= int(g.get("maxGpuCount") or 8):
                candidates.append((free, dc_id))
        if not candidates:
            raise ApiError(NO_CAPACITY)
        # The emptiest-first rule is arbitrary but deterministic: most free GPUs, then world order.
        best = max(candidates, key=lambda c: c[0])[1]
        self._take_stock(best, gid, count)
        secure = bool(self.world.data_centers[best].get("secureCloud"))

        pid = self.world.new_id("pod", 14)
        now = self._now()
        pod = {
            "id": pid, "name": inp.get("name") or "", "imageName": inp.get("imageName") or "",
            "templateId": inp.get("templateId"), "env": env, "ports": ",".join(f"{p}/{k}" for p, k in ports),
            "dockerArgs": inp.get("dockerArgs") or "",
            "containerDiskInGb": int(inp.get("containerDiskInGb") or 0),
            "volumeInGb": float(inp.get("volumeInGb") or 0),
            "volumeMountPath": inp.get("volumeMountPath") or "",
            "gpuTypeId": gid, "gpuCount": count, "dataCenterId": best, "cloudType": "SECURE" if secure else "COMMUNITY",
            "networkVolumeId": vid, "costPerGpu": self._price(gid, secure),
            "vcpuCount": float(max(int(inp.get("minVcpuCount") or 0), 8 * count)),
            "memoryInGb": float(max(int(inp.get("minMemoryInGb") or 0), 31 * count)),
            "machineId": self.world.new_id("machine", 12),
            "stopAfter": inp.get("stopAfter"), "terminateAfter": inp.get("terminateAfter"),
            "created_ts": now,
        }
        pod["podHostId"] = f"{pid}-{self.world.new_id('host', 8, '0123456789abcdef')}"
        try:
            self._boot(pod)
        except Exception:
            log.exception("pod backend failed to start pod %s", pid)
            self._return_stock(pod)
            raise ApiError(SOMETHING_WRONG) from None
        self.world.pods[pid] = pod
        log.info("created pod %s (%s x%d in %s)", pid, gid, count, best)
        return self.pod_view(pod)

    def deployCpuPod(self, info: Any, input: dict[str, Any] | None = None) -> None:
        raise ApiError("CPU pods are not available here: give a GPU type.")

    def _existing(self, input: dict[str, Any] | None) -> dict[str, Any]:
        pid = (input or {}).get("podId") or ""
        pod = self.world.pods.get(pid)
        if pod is None:
            raise ApiError(f"Pod {pid} not found.")
        return pod

    def podStop(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
        pod = self._existing(input)
        if pod.get("desiredStatus") == "RUNNING":
            self._halt(pod, "stop")
            log.info("stopped pod %s", pod["id"])
        return self.pod_view(pod)

    def podResume(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
        pod = self._existing(input)
        if pod.get("desiredStatus") == "RUNNING":
            return self.pod_view(pod)
        count = int((input or {}).get("gpuCount") or 0) or int(pod.get("gpuCount") or 1)
        dc_id = pod.get("dataCenterId")
        if dc_id not in self.world.data_centers or not self._take_stock(dc_id, pod["gpuTypeId"], count):
            raise ApiError(NOT_ENOUGH_GPUS)
        pod["gpuCount"] = count
        try:
            self._boot(pod)
        except Exception:
            log.exception("pod backend failed to start pod %s", pod["id"])
            self._return_stock(pod)
            raise ApiError(SOMETHING_WRONG) from None
        log.info("resumed pod %s", pod["id"])
        return self.pod_view(pod)

    def podTerminate(self, info: Any, input: dict[str, Any] | None = None) -> None:
        pod = self._existing(input)
        self._halt(pod, "terminate")
        del self.world.pods[pod["id"]]
        log.info("terminated pod %s", pod["id"])
        return None

    # -- account mutations

    def createNetworkVolume(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
        inp = input or {}
        dc = self._dc(inp.get("dataCenterId"))
        if dc is None or not dc.get("secureCloud"):
            raise ApiError(NO_DATA_CENTER)
        size = int(inp.get("size") or 0)
        if not 1 <= size <= 4000:
            raise ApiError("Network volume size must be between 1 and 4000 GB.")
        name = inp.get("name") or ""
        if not name.strip():
            raise ApiError("Network volume name is required.")
        vid = self.world.new_id("volume", 10)
        self.world.network_volumes[vid] = {"name": name, "size": size, "dataCenterId": inp["dataCenterId"]}
        log.info("created network volume %s in %s", vid, inp["dataCenterId"])
        return self.volume_view(vid, self.world.network_volumes[vid])

    def deleteNetworkVolume(self, info: Any, input: dict[str, Any] | None = None) -> None:
        vid = (input or {}).get("id") or ""
        if vid not in self.world.network_volumes:
            raise ApiError(f"Network volume {vid} not found.")
        users = [p["id"] for p in self.world.pods.values() if p.get("networkVolumeId") == vid]
        if users:
            raise ApiError(f"Network volume {vid} is attached to pod {users[0]}; terminate the pod first.")
        del self.world.network_volumes[vid]
        log.info("deleted network volume %s", vid)
        return None

    def updateUserSettings(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
        if (input or {}).get("pubKey") is not None:
            self.world.user["pubKey"] = input["pubKey"]
        return self.user_view()

    def root(self) -> dict[str, Any]:
        names = ("myself", "pod", "gpuTypes", "dataCenters", "podFindAndDeployOnDemand", "deployCpuPod",
                 "podStop", "podResume", "podTerminate", "createNetworkVolume", "deleteNetworkVolume",
                 "updateUserSettings")
        return {n: getattr(self, n) for n in names}


def _build_schema() -> Any:
    schema = build_schema(SDL)
    void = schema.type_map["Void"]
    void.serialize = lambda value: None  # type: ignore[attr-defined]
    return schema


SCHEMA = _build_schema()


def _format_error(err: GraphQLError, default_code: str) -> dict[str, Any]:
    doc = err.formatted
    doc.setdefault("extensions", {})
    doc["extensions"] = {"code": default_code, **(doc["extensions"] or {})}
    return dict(doc)


# --- HTTP ------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "autopod-runpod-standin"
    sys_version = ""
    standin: "RunPodStandin"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Only the path: the query string can hold an api_key.
        log.debug("%s %s", self.command, urlsplit(self.path).path)

    # -- plumbing

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (e.g. it timed out during a hang)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode())

    def _authorized(self) -> bool:
        key = self.standin.api_key
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[len("Bearer "):].strip().encode(), key.encode()):
            return True
        given = parse_qs(urlsplit(self.path).query).get("api_key", [""])[0]
        return bool(given) and hmac.compare_digest(given.encode(), key.encode())

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    # -- routes

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path.startswith("/v2/"):
            return self._rest("GET")
        if not path.startswith("/_sim/"):
            return self._json(404, {"error": "not found"})
        if not self._authorized():
            return self._json(401, {"error": "Unauthorized"})
        if path.startswith("/_sim/serverless"):
            return self._sls_control("GET")
        world = self.standin.world
        if path == "/_sim/world":
            return self._json(200, world.to_dict())
        if path == "/_sim/requests":
            with world.lock:
                return self._json(200, copy.deepcopy(world.requests))
        return self._json(404, {"error": "not found"})

    def do_DELETE(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path.startswith("/v2/"):
            return self._rest("DELETE")
        if not self._authorized():
            return self._json(401, {"error": "Unauthorized"})
        if path == "/_sim/requests":
            with self.standin.world.lock:
                self.standin.world.requests = _new_request_log()
            return self._json(200, _new_request_log())
        return self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/_sim/world":
            if not self._authorized():
                return self._json(401, {"error": "Unauthorized"})
            try:
                doc = json.loads(self._body() or b"null")
                return self._json(200, self.standin.world.patch(doc))
            except (ValueError, TypeError) as e:
                return self._json(400, {"error": f"bad patch: {e}"})
        if path == "/graphql":
            return self._graphql()
        if path.startswith("/v2/"):
            return self._rest("POST")
        if path.startswith("/_sim/serverless"):
            if not self._authorized():
                return self._json(401, {"error": "Unauthorized"})
            return self._sls_control("POST")
        return self._json(404, {"error": "not found"})

    def do_PATCH(self) -> None:  # noqa: N802
        if urlsplit(self.path).path.startswith("/v2/"):
            return self._rest("PATCH")
        return self._json(404, {"error": "not found"})

    def _problem(self, status: int, detail: str, title: str) -> None:
        self._send(status, json.dumps({"title": title, "status": status, "detail": detail}).encode(),
                   "application/problem+json")

    def _sls_control(self, method: str) -> None:
        parts = urlsplit(self.path)
        rest = [p for p in parts.path.split("/")[3:] if p]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            body = json.loads(self._body() or b"null")
        except ValueError:
            return self._json(400, {"error": "the body is not JSON"})
        status, doc = self.standin.serverless.control(method, rest, query, body)
        return self._json(status, doc)

    def _jobs(self, method: str, endpoint_id: str, op: str, rest: list[str]) -> None:
        """The Serverless job API, ``/v2/{endpoint_id}/{op}[/{job}]`` (``serverless``)."""
        world = self.standin.world
        parts = urlsplit(self.path)
        raw = self._body()
        with world.lock:
            world.requests["total"] += 1
            key = f"{method} /v2/{{endpoint}}/{op}"
            world.requests["jobs"][key] = world.requests["jobs"].get(key, 0) + 1
            reject = bool(world.settings.get("reject_key"))
        bare = (self.headers.get("Authorization") or "").strip()  # RunPod's job API also takes the key alone
        if reject or not (self._authorized() or hmac.compare_digest(bare.encode(), self.standin.api_key.encode())):
            return self._json(401, {"error": "Unauthorized"})
        status, doc, headers, drop = self.standin.serverless.handle(method, endpoint_id, op, rest, parts.query, raw)
        if drop:  # the job exists, the answer never comes: the connection just closes
            self.close_connection = True
            return None
        body = json.dumps(doc).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def _rest(self, method: str) -> None:
        """REST v2 (``runpod_rest``): the same world, key and faults as GraphQL."""
        from . import runpod_rest  # noqa: PLC0415

        standin, world = self.standin, self.standin.world
        parts = urlsplit(self.path)
        segs = [p for p in parts.path.split("/") if p]
        if len(segs) >= 3 and segs[1] not in REST_HEADS and segs[2] in JOB_OPS:
            return self._jobs(method, segs[1], segs[2], segs[3:])
        raw = self._body()
        with world.lock:
            world.requests["total"] += 1
            settings = dict(world.settings)
            world.data["counters"]["fault_clock"] += 1
            tick = world.data["counters"]["fault_clock"]
        if settings.get("reject_key") or not self._authorized():
            with world.lock:
                world.requests["faults"]["unauthorized"] += 1
            return self._problem(401, "Invalid or missing API key.", "Unauthorized")
        if settings.get("latency_s"):
            standin._stopping.wait(float(settings["latency_s"]))
        fail_every = int(settings.get("fail_every") or 0)
        failing = bool(fail_every and tick % fail_every == 0)
        if failing and not settings.get("fail_after_execute"):
            return self._fail(int(settings.get("fail_status") or 502))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._problem(400, "The request body is not JSON.", "Bad Request")
        with world.lock:
            status, doc = runpod_rest.handle(standin.api, world, method, parts.path, parts.query, body)
            route = REST_ID_RE.sub(r"/v2/\1/{id}", parts.path)
            key = f"{method} {route}" + (f" {body.get('action')}" if route.endswith("/action")
                                         and isinstance(body, dict) else "")
            world.requests["rest"][key] = world.requests["rest"].get(key, 0) + 1
        if failing:
            return self._fail(int(settings.get("fail_status") or 502))
        if doc is None:
            return self._send(status, b"")
        ctype = "application/problem+json" if status >= 400 else "application/json"
        return self._send(status, json.dumps(doc).encode(), ctype)

    def _graphql(self) -> None:
        standin = self.standin
        world = standin.world
        body = self._body()
        with world.lock:
            world.requests["total"] += 1
            settings = dict(world.settings)
        if settings.get("graphql_retired"):
            with world.lock:
                world.requests["faults"]["retired"] += 1
            status = settings.get("graphql_retired_status") or 410
            if status == 200:  # what a GraphQL server says while it still answers: an error, no data
                return self._json(200, {"errors": [{"message": GRAPHQL_RETIRED, "extensions": {"code": "GONE"}}],
                                        "data": None})
            if status == 404:  # the route is gone: a proxy's page, not GraphQL
                return self._send(404, b"404 page not found\n", "text/plain")
            return self._problem(410, GRAPHQL_RETIRED, "Gone")
        if settings.get("reject_key") or not self._authorized():
            with world.lock:
                world.requests["faults"]["unauthorized"] += 1
            return self._json(401, {"errors": [{"message": "Unauthorized", "extensions": {"code": "UNAUTHENTICATED"}}]})
        if settings.get("latency_s"):
            standin._stopping.wait(float(settings["latency_s"]))

        with world.lock:
            world.data["counters"]["fault_clock"] += 1
            tick = world.data["counters"]["fault_clock"]
        hang_every, fail_every = int(settings.get("hang_every") or 0), int(settings.get("fail_every") or 0)
        if hang_every and tick % hang_every == 0:
            with world.lock:
                world.requests["faults"]["hang"] += 1
            standin._stopping.wait(float(settings.get("hang_s") or 0))
            return self._send(504, b"<html><body><h1>504 Gateway Time-out</h1></body></html>\n", "text/html")
        failing = bool(fail_every and tick % fail_every == 0)
        status = int(settings.get("fail_status") or 502)
        if failing and not settings.get("fail_after_execute"):
            return self._fail(status)

        try:
            doc = json.loads(body or b"null")
            query = doc["query"]
            if not isinstance(query, str):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            return self._json(400, {"errors": [{"message": "POST body must be JSON with a \"query\" string.",
                                                "extensions": {"code": "BAD_REQUEST"}}]})
        result = standin.execute(query, doc.get("variables"), doc.get("operationName"))
        if failing:
            return self._fail(status)
        return self._json(200, result)

    def _fail(self, status: int) -> None:
        with self.standin.world.lock:
            self.standin.world.requests["faults"]["fail"] += 1
        text = {503: "Service Temporarily Unavailable"}.get(status, "Bad Gateway")
        self._send(status, f"<html><body><h1>{status} {text}</h1></body></html>\n".encode(), "text/html")


class RunPodStandin:
    """The stand-in server. ``start()`` serves in a background thread; ``url`` is the
    value for ``RUNPOD_API_BASE_URL``. A ``backend`` passed in belongs to the caller;
    without one, pods get real loopback TCP listeners that ``stop()`` closes."""

    def __init__(self, world: dict | None = None, *, api_key: str = "sim-key", host: str = "127.0.0.1",
                 port: int = 0, backend: PodBackend | None = None, root: "str | os.PathLike[str] | None" = None):
        self.world = World(copy.deepcopy(world) if world is not None else None)
        self.api_key = api_key
        self.host = host
        self.port = port
        self._own_backend = backend is None
        self.backend: PodBackend = backend if backend is not None else LocalTcpBackend()
        self.api = _Api(self.world, self.backend)
        # Endpoints' workers keep their files under root (a temporary folder without one) and see a network
        # volume where the pods' backend keeps it.
        self.serverless = Serverless(self.world, root=root, volume_dir=getattr(self.backend, "volume_dir", None),
                                     base_url=lambda: self.url)
        self.api.serverless = self.serverless
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.url = ""

    def execute(self, query: str, variables: dict | None = None, operation_name: str | None = None) -> dict[str, Any]:
        """Run one GraphQL request against the world; returns the response document."""
        try:
            document = parse(query)
        except GraphQLError as e:
            return {"errors": [_format_error(e, "GRAPHQL_PARSE_FAILED")], "data": None}
        op_name, fields = _root_fields(document)
        world = self.world
        with world.lock:
            self.api._enforce_deadlines()
            result = graphql_sync(SCHEMA, query, root_value=self.api.root(), variable_values=variables,
                                  operation_name=operation_name)
            reqs = world.requests
            if op_name:
                reqs["by_operation"][op_name] = reqs["by_operation"].get(op_name, 0) + 1
            for f in fields:
                reqs["by_field"][f] = reqs["by_field"].get(f, 0) + 1
        log.debug("graphql %s -> %s", op_name, "error" if result.errors else "ok")
        if result.errors:
            code = "GRAPHQL_VALIDATION_FAILED" if result.data is None and not any(
                e.path for e in result.errors) else "INTERNAL_SERVER_ERROR"
            return {"errors": [_format_error(e, code) for e in result.errors], "data": None}
        return {"data": result.data}

    def start(self) -> "RunPodStandin":
        handler = type("StandinHandler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._stopping.clear()
        if hasattr(self.backend, "attach"):  # pods reach the stand-in from inside (runpodctl)
            self.backend.attach(self.url, self.api_key)
        with self.world.lock:  # pods that were running in a saved world come back up with fresh ports
            for pod in self.world.pods.values():
                if pod.get("desiredStatus") == "RUNNING":
                    self.api._boot(pod)
        # A short poll interval keeps stop() quick (shutdown waits for the next poll).
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="runpod-standin", daemon=True)
        self._thread.start()
        self._ticker = threading.Thread(target=self._tick, name="runpod-standin-timers", daemon=True)
        self._ticker.start()
        self.serverless.start()
        log.info("RunPod stand-in listening on %s", self.url)
        return self

    def _tick(self) -> None:
        """RunPod enforces ``stopAfter``/``terminateAfter`` itself, whether or not anyone asks."""
        while not self._stopping.wait(TIMER_TICK_S):
            try:
                with self.world.lock:
                    self.api._enforce_deadlines()
            except Exception:  # a failing backend must not end the timers for every other pod
                log.exception("enforcing pod timers failed")

    def stop(self) -> None:
        self._stopping.set()  # wakes requests sleeping for latency or a hang
        self.serverless.close()  # wakes /runsync and /stream waits, ends every worker
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if getattr(self, "_ticker", None) is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        if self._own_backend and isinstance(self.backend, LocalTcpBackend):
            self.backend.close()

    def __enter__(self) -> "RunPodStandin":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autopod.sim.runpod_standin",
                                description="Serve a local stand-in for the RunPod GraphQL API.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--world", help="JSON file with the world (default: a built-in account)")
    p.add_argument("--api-key", default=None,
                   help="the bearer key clients must send (default: $AUTOPOD_SIM_API_KEY or sim-key)")
    p.add_argument("--save-world", help="write the world to this JSON file on exit")
    args = p.parse_args(argv)

    world = None
    if args.world:
        with open(args.world, encoding="utf-8") as f:
            world = json.load(f)
    api_key = args.api_key or os.environ.get("AUTOPOD_SIM_API_KEY") or "sim-key"
    standin = RunPodStandin(world, api_key=api_key, host=args.host, port=args.port).start()

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({"url": standin.url}), flush=True)
    while not done.wait(1.0):
        pass
    standin.stop()
    if args.save_world:
        tmp = args.save_world + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(standin.world.to_dict(), f, indent=1)
        os.replace(tmp, args.save_world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
