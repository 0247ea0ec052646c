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
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..core.errors import AuthError, NoCapacity, RemoteError, TransientError, UsageError
from ..core.log import redact
from .values import (  # noqa: F401 (the adapter's face: other modules import the checks from here)
    ENUM_RE,
    ENV_KEY_RE,
    FIELD_RE,
    NO_CAPACITY_TEXT,
    check_cloud_type,
    check_datacenter,
    check_id,
    lost_create_finder,
)

log = logging.getLogger(__name__)

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


class _SdkLikeError(Exception):
    """What the SDK would raise (AuthenticationError, QueryError), from autopod's own transport."""

    def __init__(self, kind: str, msg: str):
        super().__init__(msg)
        self.kind, self.msg = kind, msg


class GraphQLRetired(RemoteError):
    """RunPod answered that its GraphQL API is gone (410, a 404 for /graphql, or a GraphQL error that says
    so): REST v2 must take over."""


# What a retirement notice says: the API itself (not a field, a key or a pod) is retired now. "Will be
# retired" is news, not a refusal; "API key ... no longer valid" and capacity errors are other answers.
_RETIRED = re.compile(
    r"\b(?:graphql(?:\s+api)?|(?:the|this|runpod'?s?)\s+api)\b(?!\s+key)[^.;]{0,40}?\b(?:has|have)?\s*(?:been|is|was|are)"
    r"\s+(?:now\s+)?(?:retired|deprecated|discontinued|decommissioned|sunset|shut\s+down|turned\s+off|"
    r"no\s+longer\s+(?:available|supported|served|in\s+service))\b", re.IGNORECASE)


def is_retirement_notice(message: str) -> bool:
    """Whether RunPod's error text says its GraphQL API is retired (then REST v2 takes the call)."""
    return bool(_RETIRED.search(message or ""))


GRAPHQL_TIMEOUT_S = 30.0  # the SDK's own timeout
USER_AGENT = "autopod (RunPod GraphQL)"


def _problem_text(r: Any) -> str:
    """The ``detail`` of an RFC 9457 body, else the start of the text."""
    try:
        doc = r.json()
        if isinstance(doc, dict):
            return str(doc.get("detail") or doc.get("title") or doc)[:300]
    except ValueError:
        pass
    return (r.text or r.reason or "")[:300]


def _sdk() -> Any:
    """``import runpod``, without its CPU probe. The SDK's serverless debugger calls
    ``cpuinfo.get_cpu_info()`` at import time (about 1.1 s of the import's 1.5 s) to label worker
    logs, which autopod never writes. While the SDK imports, that call answers from ``platform``;
    ``tests/test_runpod_api.py`` checks the probe is still where this expects it. Should cpuinfo be
    missing or changed, the SDK imports the slow way, unchanged."""
    with _SDK_IMPORT:  # fleet members create pods in threads: none may see a half-imported SDK
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


_SDK_IMPORT = threading.Lock()


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
        self._session: Any = None
        self.requests_sent = 0

    backend = "graphql"
    supports_timers = True  # stopAfter/terminateAfter on the create input

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

    def _post(self, text: str) -> dict[str, Any]:
        """The request the SDK's ``run_graphql_query`` sends (URL, headers, body, timeout; a test holds
        the two to each other), sent without importing the SDK, which reads would otherwise pay for.
        It also sees what the SDK hides: the status, so a retired GraphQL is told from an outage."""
        import requests  # noqa: PLC0415

        if self._session is None:
            self._session = requests.Session()
        base = (self.creds.base_url or os.environ.get("RUNPOD_API_BASE_URL") or "https://api.runpod.io").rstrip("/")
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Authorization": f"Bearer {self.creds.api_key}"}
        r = self._session.post(f"{base}/graphql", headers=headers, data=json.dumps({"query": text}),
                               timeout=GRAPHQL_TIMEOUT_S)
        if r.status_code == 401:
            raise _SdkLikeError("auth", "Unauthorized request, please check your API key.")
        # 410 Gone; or a 404 for /graphql itself (a page, not a GraphQL answer, or one that says so).
        not_json = "json" not in r.headers.get("Content-Type", "")
        if r.status_code == 410 or (r.status_code == 404 and (not_json or is_retirement_notice(r.text))):
            raise GraphQLRetired(f"RunPod answered {r.status_code} for its GraphQL API: "
                                 f"{redact(_problem_text(r))}")
        doc = r.json()
        if "errors" in doc:
            raise _SdkLikeError("query", str(doc["errors"][0].get("message")))
        return doc

    def _once(self, op: str, fn: Callable[[Any], Any], *, sdk: bool = True) -> Any:
        """One attempt: SDK (or transport) exceptions become autopod errors or ``_Transient``."""
        import requests  # noqa: PLC0415

        rp = self._sdk() if sdk else None
        sdk_errors = (rp.error.AuthenticationError, rp.error.QueryError) if rp is not None else ()
        self.requests_sent += 1
        try:
            return fn(rp)
        except sdk_errors as e:
            is_auth = isinstance(e, rp.error.AuthenticationError)
            raise self._mapped(_SdkLikeError("auth" if is_auth else "query", str(e))) from None
        except _SdkLikeError as e:
            raise self._mapped(e) from None
        except requests.JSONDecodeError:  # 5xx/429 pages from a proxy: the SDK parses them as JSON
            raise _Transient("the answer was not JSON (server error or rate limit)") from None
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Transient(f"connection failed: {type(e).__name__}") from None
        except (KeyError, TypeError) as e:  # a JSON body without "data" (429/5xx with a message)
            raise _Transient(f"the answer had no data ({type(e).__name__}: {e})") from None

    def _mapped(self, e: "_SdkLikeError") -> Exception:
        if e.kind == "auth":
            return AuthError(f"API key rejected by RunPod (key from {self.creds.source or 'configuration'}): "
                             f"{redact(e.msg).rstrip('.')}. Check RUNPOD_API_KEY or ~/.runpod/config.toml")
        msg = redact(e.msg or "GraphQL error")
        if is_retirement_notice(msg):  # a 200 whose errors say so is the same news as a 410
            return GraphQLRetired(f"RunPod answered its GraphQL call with an error: {msg}")
        if NO_CAPACITY_TEXT in msg:
            return NoCapacity(msg)
        if _looks_transient(msg):
            return _Transient(msg)
        return RemoteError(f"RunPod: {msg}")

    def _call(self, op: str, fn: Callable[[Any], Any], *, before_retry: Callable[[], Any] | None = None,
              sdk: bool = True) -> Any:
        """Retry transient failures with exponential backoff.

        ``before_retry`` runs before each re-send; if it returns something other than
        None, that is the result (used by create to adopt a pod a lost answer created).
        """
        attempt = 0
        while True:
            try:
                return self._once(op, fn, sdk=sdk)
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
        """Send ``text``; returns ``data``. Reads go out without the SDK (``_post``), mutations through
        the SDK's transport."""

        def run(rp: Any) -> Any:
            if rp is None:
                return self._post(text)["data"]
            return rp.api.graphql.run_graphql_query(text)["data"]

        data = self._call(op, run, sdk=not text.lstrip().startswith("query"))
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

        adopt = lost_create_finder(self.list_pods, name)

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


API_CHOICES = ("auto", "graphql", "rest")
SWITCH_STATE = "runpod-api.json"
DEFAULT_ORIGIN = "https://api.runpod.io"


def configured_backend() -> str:
    """``AUTOPOD_RUNPOD_API``, else ``runpod_api`` from the inventory defaults or config.yaml, else auto."""
    from ..core.flags import env_setting  # noqa: PLC0415

    value = env_setting("AUTOPOD_RUNPOD_API")
    where = "AUTOPOD_RUNPOD_API"
    if value is None:
        from ..core import config  # noqa: PLC0415
        from ..core.inventory import load_inventory  # noqa: PLC0415

        value = config.resolve("runpod_api", None, inventory=load_inventory(), config=config.user_config())
        where = "runpod_api"
    choice = str(value or "auto").strip().lower()
    if choice not in API_CHOICES:
        raise UsageError(f"invalid {where} {value!r}: use one of {', '.join(API_CHOICES)}")
    return choice


def _validate_switches(data: dict[str, Any]) -> None:
    from ..core.state import check_fields  # noqa: PLC0415

    for origin, entry in data.items():
        check_fields(entry, f"endpoint {origin!r}", {"since": (int, float), "why": str})


def _switch_state() -> Any:
    from ..core.state import StateFile  # noqa: PLC0415

    return StateFile.named(SWITCH_STATE, validate=_validate_switches)


def switched_to_rest(origin: str) -> dict[str, Any] | None:
    """Whether ``auto`` already found GraphQL retired at this endpoint (remembered for good)."""
    from ..core.errors import ConfigError  # noqa: PLC0415

    try:
        return (_switch_state().read() or {}).get(origin)
    except ConfigError as e:
        log.warning("%s; asking GraphQL first", e)
        return None


class SwitchingAPI:
    """``runpod_api: auto``: GraphQL until RunPod answers that it is retired, then REST v2 for good.
    The switch is remembered per endpoint in AUTOPOD_HOME, and the call that found it is sent again
    on REST v2 (a retired GraphQL made nothing, so nothing is sent twice)."""

    def __init__(self, creds: Any):
        self.creds = creds
        self.origin = (creds.base_url or DEFAULT_ORIGIN).rstrip("/")
        self._impl: Any = RunPodAPI(creds)

    @property
    def backend(self) -> str:
        return self._impl.backend

    @property
    def supports_timers(self) -> bool:
        return self._impl.supports_timers

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._impl, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return getattr(self._impl, name)(*args, **kwargs)
            except GraphQLRetired as e:
                if self._impl.backend != "graphql":
                    raise
                self._switch(str(e))
                return getattr(self._impl, name)(*args, **kwargs)

        return call

    def _switch(self, why: str) -> None:
        from ..core.errors import ConfigError  # noqa: PLC0415
        from ..core.ui import warn  # noqa: PLC0415
        from .rest import RestAPI  # noqa: PLC0415

        try:
            with _switch_state().update() as data:
                data[self.origin] = {"since": time.time(), "why": why[:300]}
            where = f"remembered in {_switch_state().path}"
        except ConfigError as e:
            where = f"not remembered: {e}"
        warn(f"RunPod's GraphQL API is retired ({why}); autopod uses REST v2 from now on ({where})")
        self._impl = RestAPI(self.creds)


def connect(creds: Any = None) -> Any:
    """The adapter for the configured account (``RUNPOD_API_KEY`` / ~/.runpod/config.toml / simulator)
    and backend (``runpod_api``): GraphQL, REST v2, or auto (GraphQL until it is retired)."""
    from ..core.config import api_credentials  # noqa: PLC0415

    creds = creds or api_credentials()
    choice = configured_backend()
    origin = (creds.base_url or DEFAULT_ORIGIN).rstrip("/")
    if choice == "auto" and switched_to_rest(origin):
        choice = "rest"
    log.debug("RunPod API: %s at %s", choice, origin)
    if choice == "rest":
        from .rest import RestAPI  # noqa: PLC0415

        return RestAPI(creds)
    if choice == "graphql":
        return RunPodAPI(creds)
    return SwitchingAPI(creds)


__all__ = ["RunPodAPI", "connect", "check_id", "check_datacenter", "check_cloud_type", "gql_value",
           "pod_create_mutation", "Enum"]
