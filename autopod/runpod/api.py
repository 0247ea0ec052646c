"""The RunPod adapter: the only module that imports ``runpod``, and only inside functions.

``import runpod`` costs about 1.5 s (``cpuinfo`` runs at import time), so
``autopod --help``, ``--list`` and tasks that never call the API must not pay it.

The SDK (1.12.0) speaks GraphQL and interpolates values into the query text
without escaping them, and its pod queries lack fields autopod needs
(``machine.podHostId``, ``machine.dataCenterId``, ``networkVolumeId``,
``runtime.uptimeInSeconds``). So this module sends its own query text through
``runpod.api.graphql.run_graphql_query`` (the SDK's transport and auth) where
the SDK falls short: every string goes in as a JSON string literal (JSON string
escapes are valid GraphQL escapes) and every id or enum is checked against a
pattern first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..core.errors import AuthError, NoCapacity, RemoteError, TransientError, UsageError
from ..core.log import redact

log = logging.getLogger(__name__)

NO_CAPACITY_TEXT = "There are no longer any instances available"
# Ids are short alphanumeric strings (pods "5xpma5eg46tqjq", volumes "grvtso8ftn").
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DATACENTER_RE = re.compile(r"^[A-Z]{2,4}(-[A-Z0-9]{1,8}){1,3}$")
ENUM_RE = re.compile(r"^[A-Z][A-Z_]{0,31}$")
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
CLOUD_TYPES = ("SECURE", "COMMUNITY", "ALL")

DEFAULT_RETRIES = 4
DEFAULT_BASE_DELAY = 1.0

POD_FIELDS = """
    id
    name
    desiredStatus
    costPerHr
    gpuCount
    imageName
    containerDiskInGb
    volumeInGb
    volumeMountPath
    ports
    uptimeSeconds
    lastStatusChange
    machineId
    networkVolumeId
    env
    runtime {
      uptimeInSeconds
      ports { ip isIpPublic privatePort publicPort type }
    }
    machine { podHostId gpuDisplayName dataCenterId }
"""
VOLUME_FIELDS = "id name size dataCenterId"


# --- GraphQL literals -------------------------------------------------------


class Enum(str):
    """A GraphQL enum value (written bare, e.g. ``cloudType: SECURE``)."""


def check_id(value: Any, what: str = "id") -> str:
    """Pod and volume ids go into queries; anything but a plain id is refused before use."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise UsageError(f"invalid {what} {value!r}: expected letters, digits, '-' or '_'")
    return value


def check_datacenter(value: Any) -> str:
    if not isinstance(value, str) or not DATACENTER_RE.match(value):
        raise UsageError(f"invalid data center id {value!r}: expected an id like EU-RO-1 or US-KS-2")
    return value


def check_cloud_type(value: Any) -> str:
    v = str(value or "").upper()
    if v not in CLOUD_TYPES:
        raise UsageError(f"invalid cloud type {value!r}: use one of {', '.join(CLOUD_TYPES)}")
    return v


def gql_value(v: Any) -> str:
    """Render a Python value as a GraphQL input literal. Strings are JSON-escaped, so quotes,
    backslashes, newlines and unicode arrive intact and nothing can close the string early."""
    if v is None:
        return "null"
    if isinstance(v, Enum):
        if not ENUM_RE.match(v):
            raise UsageError(f"invalid enum value {v!r}")
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, dict):
        parts = []
        for k, val in v.items():
            if not FIELD_RE.match(str(k)):
                raise UsageError(f"invalid field name {k!r}")
            parts.append(f"{k}: {gql_value(val)}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(gql_value(x) for x in v) + "]"
    raise TypeError(f"cannot send {type(v).__name__} to GraphQL")


def env_list(env: dict[str, Any]) -> list[dict[str, str]]:
    """``{"K": "v"}`` -> ``[{key: "K", value: "v"}]`` (the create input's shape), keys checked."""
    out = []
    for k, val in env.items():
        if not ENV_KEY_RE.match(str(k)):
            raise UsageError(f"invalid environment variable name {k!r}")
        out.append({"key": str(k), "value": "" if val is None else str(val)})
    return out


def pod_create_mutation(input: dict[str, Any]) -> str:
    """The ``podFindAndDeployOnDemand`` mutation for ``input`` (GraphQL field names as keys).

    ``env`` may be given as a dict; ``cloudType`` is validated and sent as an enum.
    """
    fields = dict(input)
    if "cloudType" in fields:
        fields["cloudType"] = Enum(check_cloud_type(fields["cloudType"]))
    if isinstance(fields.get("env"), dict):
        fields["env"] = env_list(fields["env"])
    if fields.get("networkVolumeId") is not None:
        check_id(fields["networkVolumeId"], "volume id")
    if fields.get("dataCenterId") is not None:
        check_datacenter(fields["dataCenterId"])
    return (
        "mutation {\n  podFindAndDeployOnDemand(input: " + gql_value(fields) + ") {\n"
        "    id\n    name\n    desiredStatus\n    imageName\n    machineId\n    machine { podHostId }\n  }\n}"
    )


# --- the adapter ------------------------------------------------------------


@dataclass
class _Transient(Exception):
    why: str


def _sdk() -> Any:
    """``import runpod``, without its CPU probe. The SDK's serverless debugger calls
    ``cpuinfo.get_cpu_info()`` at import time (about 1.1 s of the import's 1.5 s) to label worker
    logs, which autopod never writes. While the SDK imports, that call answers from ``platform``;
    ``tests/test_runpod_api.py`` checks the probe is still where this expects it. Should cpuinfo be
    missing or changed, the SDK imports the slow way, unchanged."""
    if "runpod" in sys.modules:
        return sys.modules["runpod"]
    try:
        import cpuinfo  # noqa: PLC0415
    except ImportError:
        cpuinfo = None
    real = getattr(cpuinfo, "get_cpu_info", None)
    if real is not None:
        cpuinfo.get_cpu_info = _quick_cpu_info
    try:
        import runpod  # noqa: PLC0415  (lazy on purpose)
    finally:
        if real is not None:
            cpuinfo.get_cpu_info = real
    return runpod


def _quick_cpu_info() -> dict[str, Any]:
    import platform  # noqa: PLC0415

    return {"brand_raw": platform.processor() or platform.machine() or "unknown"}


class RunPodAPI:
    """RunPod calls with retries, escaping and autopod's errors.

    ``creds`` is ``config.ApiCredentials``. ``sleep`` is injectable so tests do not wait.
    """

    def __init__(self, creds: Any, *, retries: int | None = None, base_delay: float | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.creds = creds
        self.retries = DEFAULT_RETRIES if retries is None else retries
        self.base_delay = DEFAULT_BASE_DELAY if base_delay is None else base_delay
        self.sleep = sleep
        self._runpod: Any = None
        self.requests_sent = 0

    # -- plumbing

    def _sdk(self) -> Any:
        if self._runpod is None:
            self._runpod = _sdk()
        rp = self._runpod
        # The SDK reads both per call; set them every time so two RunPodAPI objects
        # in one process (tests, chained tasks) cannot point each other elsewhere.
        rp.api_key = self.creds.api_key
        if self.creds.base_url:
            os.environ["RUNPOD_API_BASE_URL"] = self.creds.base_url.rstrip("/")
        return rp

    def _once(self, op: str, fn: Callable[[Any], Any]) -> Any:
        """One attempt: SDK exceptions become autopod errors or ``_Transient``."""
        import requests  # noqa: PLC0415

        rp = self._sdk()
        self.requests_sent += 1
        try:
            return fn(rp)
        except rp.error.AuthenticationError as e:
            raise AuthError(
                f"API key rejected by RunPod (key from {self.creds.source or 'configuration'}): "
                f"{redact(str(e)).rstrip('.')}. Check RUNPOD_API_KEY or ~/.runpod/config.toml"
            ) from None
        except rp.error.QueryError as e:
            msg = redact(str(e) or "GraphQL error")
            if NO_CAPACITY_TEXT in msg:
                raise NoCapacity(msg) from None
            if _looks_transient(msg):
                raise _Transient(msg) from None
            raise RemoteError(f"RunPod: {msg}") from None
        except requests.JSONDecodeError:  # 5xx/429 pages from a proxy: the SDK parses them as JSON
            raise _Transient("the answer was not JSON (server error or rate limit)") from None
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Transient(f"connection failed: {type(e).__name__}") from None
        except (KeyError, TypeError) as e:  # a JSON body without "data" (429/5xx with a message)
            raise _Transient(f"the answer had no data ({type(e).__name__}: {e})") from None

    def _call(self, op: str, fn: Callable[[Any], Any], *, before_retry: Callable[[], Any] | None = None) -> Any:
        """Retry transient failures with exponential backoff.

        ``before_retry`` runs before each re-send; if it returns something other than
        None, that is the result (used by create to adopt a pod a lost answer created).
        """
        attempt = 0
        while True:
            try:
                return self._once(op, fn)
            except _Transient as t:
                attempt += 1
                if attempt > self.retries:
                    raise TransientError(
                        f"RunPod {op} failed after {attempt} attempts: {t.why}; try again later"
                    ) from None
                delay = self.base_delay * (2 ** (attempt - 1))
                log.warning("RunPod %s: %s; retrying in %.1fs (%d/%d)", op, t.why, delay, attempt, self.retries)
                self.sleep(delay)
                if before_retry is not None:
                    found = before_retry()
                    if found is not None:
                        return found

    def query(self, op: str, text: str) -> dict[str, Any]:
        """Send ``text`` through the SDK's transport; returns ``data``."""

        def run(rp: Any) -> Any:
            return rp.api.graphql.run_graphql_query(text)["data"]

        data = self._call(op, run)
        if data is None:
            raise _as_remote(op)
        return data

    # -- pods

    def list_pods(self) -> list[dict[str, Any]]:
        data = self.query("list pods", "query myPods {\n  myself {\n    pods {" + POD_FIELDS + "    }\n  }\n}")
        return list((data.get("myself") or {}).get("pods") or [])

    def get_pod(self, pod_id: str) -> dict[str, Any] | None:
        """The pod, or None when it does not exist (RunPod answers ``pod: null``)."""
        check_id(pod_id, "pod id")
        text = "query pod {\n  pod(input: {podId: " + gql_value(pod_id) + "}) {" + POD_FIELDS + "  }\n}"
        return self.query("get pod", text).get("pod")

    def create_pod(self, input: dict[str, Any]) -> dict[str, Any]:
        """Create one pod. Never creates two: before re-sending after a transient failure,
        look for a pod with the same name that the lost answer may have created."""
        text = pod_create_mutation(input)
        name = input.get("name")

        def run(rp: Any) -> Any:
            return rp.api.graphql.run_graphql_query(text)["data"]["podFindAndDeployOnDemand"]

        def adopt() -> dict[str, Any] | None:
            if not name:
                return None
            try:
                pods = self.list_pods()
            except TransientError:
                return None
            for p in pods:
                if p.get("name") == name and p.get("desiredStatus") != "TERMINATED":
                    log.warning("pod %s (%s) appeared although its create answer was lost; using it", name, p["id"])
                    return p
            return None

        pod = self._call("create pod", run, before_retry=adopt)
        if not pod or not pod.get("id"):
            raise RemoteError("RunPod accepted the create but returned no pod id")
        return pod

    def stop_pod(self, pod_id: str) -> dict[str, Any]:
        check_id(pod_id, "pod id")
        return self._call("stop pod", lambda rp: rp.stop_pod(pod_id)) or {}

    def resume_pod(self, pod_id: str, gpu_count: int) -> dict[str, Any]:
        check_id(pod_id, "pod id")
        if not isinstance(gpu_count, int) or gpu_count < 1:
            raise UsageError(f"invalid GPU count {gpu_count!r}")
        return self._call("resume pod", lambda rp: rp.resume_pod(pod_id, gpu_count)) or {}

    def terminate_pod(self, pod_id: str) -> None:
        check_id(pod_id, "pod id")
        self._call("terminate pod", lambda rp: rp.terminate_pod(pod_id))

    # -- GPUs and data centers

    def gpu_types(self) -> list[dict[str, Any]]:
        text = ("query GpuTypes {\n  gpuTypes {\n    id\n    displayName\n    memoryInGb\n    maxGpuCount\n"
                "    secureCloud\n    communityCloud\n    securePrice\n    communityPrice\n  }\n}")
        return list(self.query("list GPU types", text).get("gpuTypes") or [])

    def gpu_stock(self) -> list[dict[str, Any]]:
        """Data centers with per-GPU ``stockStatus`` (High/Medium/Low/None). Stock is a hint, not a promise."""
        text = ("query DataCenters {\n  dataCenters {\n    id\n    name\n    location\n"
                "    gpuAvailability { gpuTypeId displayName stockStatus }\n  }\n}")
        return list(self.query("list data centers", text).get("dataCenters") or [])

    # -- account and volumes

    def user(self) -> dict[str, Any]:
        return self._call("get user", lambda rp: rp.get_user()) or {}

    def list_volumes(self) -> list[dict[str, Any]]:
        text = "query myself {\n  myself {\n    networkVolumes { " + VOLUME_FIELDS + " }\n  }\n}"
        return list((self.query("list volumes", text).get("myself") or {}).get("networkVolumes") or [])

    def create_volume(self, name: str, size_gb: int, datacenter: str) -> dict[str, Any]:
        check_datacenter(datacenter)
        if not isinstance(size_gb, int) or size_gb < 1:
            raise UsageError(f"invalid volume size {size_gb!r}")
        fields = {"name": name, "size": size_gb, "dataCenterId": datacenter}
        text = "mutation {\n  createNetworkVolume(input: " + gql_value(fields) + ") { " + VOLUME_FIELDS + " }\n}"
        return self.query("create volume", text).get("createNetworkVolume") or {}

    def delete_volume(self, volume_id: str) -> None:
        check_id(volume_id, "volume id")
        self.query("delete volume", "mutation {\n  deleteNetworkVolume(input: {id: " + gql_value(volume_id) + "})\n}")


def _looks_transient(msg: str) -> bool:
    m = msg.lower()
    return any(s in m for s in ("rate limit", "too many requests", "temporarily unavailable", "bad gateway",
                                "gateway timeout", "service unavailable"))


def _as_remote(op: str) -> RemoteError:
    return RemoteError(f"RunPod {op}: the answer carried no data")


def connect() -> RunPodAPI:
    """The adapter for the configured account (``RUNPOD_API_KEY`` / ~/.runpod/config.toml / simulator)."""
    from ..core.config import api_credentials  # noqa: PLC0415

    return RunPodAPI(api_credentials())


__all__ = ["RunPodAPI", "connect", "check_id", "check_datacenter", "check_cloud_type", "gql_value",
           "pod_create_mutation", "Enum"]
