"""The REST v2 backend: every RunPod call autopod makes, over ``requests`` with the Bearer key.

It answers in the same shapes as the GraphQL adapter (``api.RunPodAPI``): pods as the GraphQL
pod fields (``desiredStatus``, ``costPerHr``, ``runtime.ports``, ``machine``), so ``Pod.from_api``,
the tasks, the state files and the tests above the adapter do not change. The mapping is here,
next to the calls, in ``pod_from_rest`` and ``create_body``.

What REST v2 does differently (the reference, REST v2 and A7):
- RFC 9457 problem bodies: 400 carries RunPod's no-capacity text (the GPU fallback goes on),
  402 is the balance, 409 an action the pod's status does not allow, 422 the schema.
- Retries: connection errors and 5xx on idempotent methods, 429 on any method after
  ``Retry-After``. A create whose answer was lost looks for its pod before sending again.
- Create: ``gpu.count`` always sent, ``cloud`` is SECURE or COMMUNITY (no ALL), unknown body
  keys are rejected, there is no stopAfter/terminateAfter (``supports_timers``), ``startSsh``
  and ``ssh.direct`` replace scraping ports. Terminate answers 204.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from ..core.errors import AuthError, Conflict, NoCapacity, RemoteError, TransientError, UsageError
from ..core.log import redact
from ..core.ui import warn
from .values import NO_CAPACITY_TEXT, check_datacenter, check_id, lost_create_finder

log = logging.getLogger(__name__)

DEFAULT_BASE = "https://api.runpod.io"
TIMEOUT_S = 30.0
RETRIES = 4
MAX_WAIT_S = 60.0
STATUS = {"PROVISIONING": "RUNNING", "STARTING": "RUNNING", "RUNNING": "RUNNING", "EXITED": "EXITED",
          "ERROR": "EXITED", "TERMINATED": "TERMINATED"}
STOCK = {"HIGH": "High", "MEDIUM": "Medium", "LOW": "Low", "NONE": "None"}
MIN_VOLUME_GB, MAX_VOLUME_GB = 10, 4096


class RestAPI:
    """REST v2, with the GraphQL adapter's methods and answers. ``sleep`` is injectable for tests."""

    backend = "rest"
    supports_timers = False

    def __init__(self, creds: Any, *, retries: int | None = None, base_delay: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.creds = creds
        self.base = (creds.base_url or DEFAULT_BASE).rstrip("/")
        self.retries = RETRIES if retries is None else retries
        self.base_delay = base_delay
        self.sleep = sleep
        self.requests_sent = 0
        self._session: Any = None
        self._catalog: list[dict[str, Any]] | None = None

    # -- transport -----------------------------------------------------------------------------

    def _request(self, op: str, method: str, path: str, *, params: dict[str, str] | None = None,
                 body: Any = None, before_retry: Callable[[], Any] | None = None) -> tuple[int, Any]:
        import requests  # noqa: PLC0415

        if self._session is None:
            self._session = requests.Session()
        headers = {"Authorization": f"Bearer {self.creds.api_key}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        idempotent = method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        attempt = 0
        while True:
            attempt += 1
            self.requests_sent += 1
            why, wait = "", None
            try:
                r = self._session.request(method, self.base + path, params=params, headers=headers,
                                          data=json.dumps(body) if body is not None else None, timeout=TIMEOUT_S)
            except (requests.ConnectionError, requests.Timeout) as e:
                if not idempotent and before_retry is None:
                    raise TransientError(f"RunPod {op} failed: {type(e).__name__}; try again later") from None
                why = f"connection failed: {type(e).__name__}"
            else:
                if r.status_code == 429:
                    why, wait = "rate limited (429)", retry_after(r)
                elif r.status_code >= 500 and (idempotent or before_retry is not None):
                    why = f"server error {r.status_code}"
                else:
                    return r.status_code, _doc(r) if r.status_code < 400 else self._fail(op, r)
            if attempt > self.retries:
                raise TransientError(f"RunPod {op} failed after {attempt} attempts: {why}; try again later")
            delay = min(MAX_WAIT_S, wait if wait is not None else self.base_delay * (2 ** (attempt - 1)))
            log.warning("RunPod %s: %s; retrying in %.1fs (%d/%d)", op, why, delay, attempt, self.retries)
            self.sleep(delay)
            if before_retry is not None and why != "rate limited (429)":  # a 429 was not carried out
                found = before_retry()
                if found is not None:
                    return 200, found

    def _fail(self, op: str, r: Any) -> Any:
        """A problem body as autopod's error (raised)."""
        doc = _doc(r) if r.content else {}
        doc = doc if isinstance(doc, dict) else {}
        detail = redact(str(doc.get("detail") or doc.get("title") or doc.get("error") or r.reason or ""))
        errors = "; ".join(redact(str(e)) for e in doc.get("errors") or [])
        status = r.status_code
        if status == 401:
            raise AuthError(f"API key rejected by RunPod (key from {self.creds.source or 'configuration'}): "
                            f"{detail.rstrip('.')}. Check RUNPOD_API_KEY or ~/.runpod/config.toml")
        if status == 400 and NO_CAPACITY_TEXT in detail:
            raise NoCapacity(detail)
        if status == 402:
            raise RemoteError(f"RunPod {op}: the account's balance is too low (402): {detail}; add funds at "
                              "https://www.runpod.io/console/user/billing")
        if status == 403:
            raise AuthError(f"RunPod {op}: the API key may not do this (403): {detail}")
        if status == 404:
            raise _NotFound(detail)
        if status == 409:
            raise Conflict(f"RunPod {op}: not allowed in the pod's current state (409): {detail}")
        if status == 422:
            raise RemoteError(f"RunPod {op}: the request did not match REST v2's schema (422): {detail}"
                              + (f" ({errors})" if errors else ""))
        raise RemoteError(f"RunPod {op} ({status}): {detail}" + (f" ({errors})" if errors else ""))

    # -- pods ----------------------------------------------------------------------------------

    def list_pods(self) -> list[dict[str, Any]]:
        _, doc = self._request("list pods", "GET", "/v2/pods")
        return [pod_from_rest(p) for p in (doc or {}).get("pods") or []]

    def get_pod(self, pod_id: str) -> dict[str, Any] | None:
        check_id(pod_id, "pod id")
        try:
            _, doc = self._request("get pod", "GET", f"/v2/pods/{pod_id}")
        except _NotFound:
            return None
        return pod_from_rest(doc)

    def create_pod(self, input: dict[str, Any]) -> dict[str, Any]:
        """Create one pod from the GraphQL-style input the settings build. Never two: before sending
        again after a lost answer, look for a pod of that name."""
        body = create_body(input)
        name = body["name"]

        adopt = lost_create_finder(self.list_pods, name)

        _, doc = self._request("create pod", "POST", "/v2/pods", body=body, before_retry=adopt)
        pod = doc if "desiredStatus" in (doc or {}) else pod_from_rest(doc or {})
        if not pod.get("id"):
            raise RemoteError("RunPod accepted the create but returned no pod id")
        return pod

    def _action(self, op: str, pod_id: str, action: str, ok_when: str) -> dict[str, Any]:
        check_id(pod_id, "pod id")
        try:
            _, doc = self._request(op, "POST", f"/v2/pods/{pod_id}/action", body={"action": action})
        except Conflict:
            now = self.get_pod(pod_id)
            if now is not None and now.get("desiredStatus") == ok_when:
                return now  # already there: GraphQL answers the pod as it is, so does this
            raise
        except _NotFound as e:
            raise RemoteError(f"RunPod {op}: pod {pod_id} not found ({e})") from None
        return pod_from_rest(doc) if doc else {}

    def stop_pod(self, pod_id: str) -> dict[str, Any]:
        return self._action("stop pod", pod_id, "stop", "EXITED")

    def resume_pod(self, pod_id: str, gpu_count: int) -> dict[str, Any]:
        # REST v2 starts a pod with the GPU count it was created with; the count cannot change here.
        return self._action("resume pod", pod_id, "start", "RUNNING")

    def terminate_pod(self, pod_id: str) -> None:
        check_id(pod_id, "pod id")
        try:
            self._request("terminate pod", "POST", f"/v2/pods/{pod_id}/action", body={"action": "terminate"})
        except _NotFound as e:
            raise RemoteError(f"RunPod terminate pod: pod {pod_id} not found ({e})") from None

    # -- GPUs and data centers -----------------------------------------------------------------

    def _gpus(self) -> list[dict[str, Any]]:
        """The GPU catalog with stock per data center (one request per process)."""
        if self._catalog is None:
            _, doc = self._request("list GPU types", "GET", "/v2/catalog/gpus",
                                   params={"include": "AVAILABILITY", "product": "POD"})
            self._catalog = list((doc or {}).get("gpus") or [])
        return self._catalog

    def gpu_types(self) -> list[dict[str, Any]]:
        return [{"id": g.get("id"), "displayName": g.get("displayName"), "memoryInGb": g.get("memoryInGb"),
                 "maxGpuCount": g.get("maxGpuCount"), "secureCloud": g.get("securePrice") is not None,
                 "communityCloud": g.get("communityPrice") is not None, "securePrice": g.get("securePrice"),
                 "communityPrice": g.get("communityPrice")} for g in self._gpus() if g.get("id") != "unknown"]

    def gpu_stock(self) -> list[dict[str, Any]]:
        """Data centers with per-GPU stock, in the GraphQL shape (High/Medium/Low/None)."""
        dcs: dict[str, list[dict[str, Any]]] = {}
        for g in self._gpus():
            for dc in g.get("dataCenters") or []:
                dcs.setdefault(dc.get("id"), []).append(
                    {"gpuTypeId": g.get("id"), "displayName": g.get("displayName"),
                     "stockStatus": STOCK.get(str(dc.get("availability") or "NONE").upper(), "None")})
        return [{"id": dc, "name": dc, "location": None, "gpuAvailability": avail} for dc, avail in dcs.items() if dc]

    # -- account and volumes -------------------------------------------------------------------

    def user(self) -> dict[str, Any]:
        """REST v2 has no account call; a listing that answers proves the key (as RunPod's own client checks)."""
        self._request("check the key", "GET", "/v2/pods")
        return {"id": "(REST v2 does not name the account)", "verified": True}

    def list_volumes(self) -> list[dict[str, Any]]:
        _, doc = self._request("list volumes", "GET", "/v2/network-volumes")
        return [volume_from_rest(v) for v in (doc or {}).get("networkVolumes") or []]

    def create_volume(self, name: str, size_gb: int, datacenter: str) -> dict[str, Any]:
        check_datacenter(datacenter)
        if not isinstance(size_gb, int) or not MIN_VOLUME_GB <= size_gb <= MAX_VOLUME_GB:
            raise UsageError(f"invalid volume size {size_gb!r}: REST v2 takes {MIN_VOLUME_GB} to {MAX_VOLUME_GB} GB")
        _, doc = self._request("create volume", "POST", "/v2/network-volumes",
                               body={"name": name, "size": size_gb, "dataCenter": datacenter})
        return volume_from_rest(doc or {})

    def delete_volume(self, volume_id: str) -> None:
        check_id(volume_id, "volume id")
        try:
            self._request("delete volume", "DELETE", f"/v2/network-volumes/{volume_id}")
        except _NotFound as e:
            raise RemoteError(f"RunPod delete volume: {e}") from None


    # -- Serverless endpoints (REST v2 only: GraphQL's saveEndpoint resets what it is not given) --------

    def list_endpoints(self) -> list[dict[str, Any]]:
        _, doc = self._request("list endpoints", "GET", "/v2/serverless")
        return list((doc or {}).get("endpoints") or [])

    def get_endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        check_id(endpoint_id, "endpoint id")
        try:
            _, doc = self._request("get endpoint", "GET", f"/v2/serverless/{endpoint_id}")
        except _NotFound:
            return None
        return doc or None

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        """One endpoint per name: before sending again after a lost answer, look for one of that name."""
        name = body.get("name")

        def adopt() -> dict[str, Any] | None:
            try:
                found = [e for e in self.list_endpoints() if e.get("name") == name]
            except TransientError:
                return None
            if found:
                log.warning("endpoint %s (%s) appeared although its create answer was lost; using it", name,
                            found[0].get("id"))
                return found[0]
            return None

        _, doc = self._request("create endpoint", "POST", "/v2/serverless", body=body, before_retry=adopt)
        if not (doc or {}).get("id"):
            raise RemoteError("RunPod accepted the endpoint create but returned no id")
        return doc

    def update_endpoint(self, endpoint_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH the given fields (absolute values, so sending again after a lost answer changes nothing)."""
        check_id(endpoint_id, "endpoint id")
        try:
            _, doc = self._request("update endpoint", "PATCH", f"/v2/serverless/{endpoint_id}", body=body,
                                   before_retry=lambda: None)
        except _NotFound as e:
            raise RemoteError(f"RunPod update endpoint: endpoint {endpoint_id} not found ({e})") from None
        return doc or {}

    def delete_endpoint(self, endpoint_id: str) -> bool:
        """Delete; False when it was already gone."""
        check_id(endpoint_id, "endpoint id")
        try:
            self._request("delete endpoint", "DELETE", f"/v2/serverless/{endpoint_id}")
        except _NotFound:
            return False
        return True

    def endpoint_workers(self, endpoint_id: str) -> dict[str, Any]:
        """``{workers: [...], summary: {running, idle, initializing, throttled, unhealthy, total}}``."""
        check_id(endpoint_id, "endpoint id")
        _, doc = self._request("list endpoint workers", "GET", f"/v2/serverless/{endpoint_id}/workers")
        return doc or {}

    def gpu_catalog(self) -> list[dict[str, Any]]:
        """The GPU catalog without stock: each type's ``pool`` and ``price`` (``price.serverless``)."""
        _, doc = self._request("list GPU types", "GET", "/v2/catalog/gpus")
        return [g for g in (doc or {}).get("gpus") or [] if g.get("id") != "unknown"]


class _NotFound(RemoteError):
    """404: the caller decides whether that is None, ``ok`` or an error."""


def _doc(r: Any) -> Any:
    if r.status_code == 204 or not r.content:
        return None
    try:
        return r.json()
    except ValueError:
        raise TransientError(f"RunPod answered {r.status_code} with a body that is not JSON") from None


def retry_after(r: Any) -> float | None:
    """Seconds a 429 or 5xx answer asks to wait (``Retry-After``), or None."""
    value = r.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: back off as usual


# --- shapes ---------------------------------------------------------------------------------


def _display_name(gpu: dict[str, Any]) -> str | None:
    if gpu.get("displayName"):
        return gpu["displayName"]
    gid = gpu.get("id") or ""
    for prefix in ("NVIDIA GeForce ", "NVIDIA "):
        if gid.startswith(prefix):
            return gid[len(prefix):]
    return gid or None


def pod_from_rest(p: dict[str, Any]) -> dict[str, Any]:
    """A REST v2 pod in the GraphQL adapter's shape. ``ssh.direct`` becomes the public 22/tcp port
    (readiness is still that endpoint answering); ``runtime`` stays None until the container is up."""
    gpu = p.get("gpu") or {}
    ssh = p.get("ssh") or {}
    direct = ssh.get("direct") or None
    rt = p.get("runtime") or None
    runtime = None
    if rt or direct:
        ports = [{"ip": x.get("ip"), "isIpPublic": x.get("type") == "tcp", "privatePort": x.get("private"),
                  "publicPort": x.get("public"), "type": x.get("type")}
                 for x in ((rt or {}).get("ports") or []) if x.get("private") != 22]
        if direct:
            ports.append({"ip": direct.get("host"), "isIpPublic": True, "privatePort": 22,
                          "publicPort": direct.get("port"), "type": "tcp"})
        runtime = {"uptimeInSeconds": (rt or {}).get("uptime"), "ports": ports}
    network = ((p.get("mounts") or {}).get("network") or [{}])[0]
    persistent = (p.get("mounts") or {}).get("persistent") or {}
    env = p.get("env") or {}
    return {
        "id": p.get("id"), "name": p.get("name"), "desiredStatus": STATUS.get(str(p.get("status")), p.get("status")),
        "costPerHr": p.get("cost"), "gpuCount": gpu.get("count"), "imageName": p.get("image"),
        "containerDiskInGb": p.get("disk"), "volumeInGb": persistent.get("size") or 0,
        "volumeMountPath": network.get("path") or persistent.get("path"),
        "ports": ",".join(p.get("ports") or []), "uptimeSeconds": (rt or {}).get("uptime") or 0,
        "networkVolumeId": network.get("volumeId"),
        "env": [f"{k}={v}" for k, v in env.items()] if isinstance(env, dict) else list(env),
        "runtime": runtime,
        "machine": {"podHostId": (ssh.get("proxy") or {}).get("username"), "gpuDisplayName": _display_name(gpu),
                    "dataCenterId": p.get("dataCenterId")},
    }


def volume_from_rest(v: dict[str, Any]) -> dict[str, Any]:
    return {"id": v.get("id"), "name": v.get("name"), "size": v.get("size"), "dataCenterId": v.get("dataCenter")}


_dropped_warned: set[str] = set()


def create_body(inp: dict[str, Any]) -> dict[str, Any]:
    """The GraphQL-style create input (``spec.build_create_input``) as a ``CreatePodRequest``.
    REST v2 rejects unknown keys, so only its own go in; what it cannot carry is said, never dropped
    silently."""
    cloud = str(inp.get("cloudType") or "SECURE")
    if cloud not in ("SECURE", "COMMUNITY"):
        _once_warn("cloud", "REST v2 has no cloud type ALL: asking for SECURE (set --cloud-type COMMUNITY for "
                            "community cloud)")
        cloud = "SECURE"
    for field, flag in (("stopAfter", "--stop-after"), ("terminateAfter", "--terminate-after")):
        if inp.get(field):
            _once_warn(field, f"RunPod's {flag} timer is not available on REST v2 (only GraphQL has it), so it is "
                              "not set; the in-pod watchdog covers it: `autopod pod.guard --idle-minutes N`")
    env = inp.get("env") or {}
    if isinstance(env, list):
        env = {e["key"]: e.get("value") or "" for e in env}
    body: dict[str, Any] = {
        "name": inp["name"],
        "gpu": {"id": inp["gpuTypeId"], "count": int(inp.get("gpuCount") or 1)},  # always sent: see the module doc
        "cloud": cloud,
        "ports": [p for p in str(inp.get("ports") or "").split(",") if p],
        "env": {str(k): "" if v is None else str(v) for k, v in env.items()},
        "startSsh": True,
    }
    if inp.get("imageName"):
        body["image"] = inp["imageName"]
    if inp.get("templateId"):
        body["templateId"] = inp["templateId"]
    if inp.get("containerDiskInGb"):
        body["disk"] = int(inp["containerDiskInGb"])
    if inp.get("dockerArgs"):
        body["args"] = inp["dockerArgs"]
    if inp.get("dataCenterId"):
        body["dataCenterIds"] = [check_datacenter(inp["dataCenterId"])]
    if inp.get("networkVolumeId"):
        body["mounts"] = {"network": [{"volumeId": check_id(inp["networkVolumeId"], "volume id"),
                                       "path": inp.get("volumeMountPath") or "/workspace"}]}
    return body


def _once_warn(key: str, msg: str) -> None:
    if key not in _dropped_warned:
        _dropped_warned.add(key)
        warn(msg)
