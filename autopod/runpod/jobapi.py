"""The Serverless job API (``/v2/{endpoint_id}/run``, ``/status``, ``/cancel``, ``/purge-queue``, ``/health``).

A small client on ``requests``, not the SDK's ``runpod.Endpoint``: the SDK costs its import, never
retries an HTTPS call (its retry adapter is mounted on ``http://`` only), turns every error status
into a bare ``HTTPError``, and its ``run_sync`` drops a failed job's ``error`` text (reference
serverless.md §1.8). Here:

- 429 and 5xx are retried with backoff (``Retry-After`` honoured), a few tries, then ``JobAPIError``.
- ``/run`` has no client-chosen id, so it is sent again only when RunPod surely did not take it
  (429, a 5xx that came with a body, a connection that never opened). Any other lost answer is
  ``SubmitLost``: the job may exist, and only the caller's ledger can decide what to do.
- 401/403 is a configuration error (exit 2), a 404 on the endpoint is ``NoSuchEndpoint`` (exit 2),
  a 404 for a job is ``JobGone`` (unknown, or past RunPod's retention or its ``ttl``).
- The API key goes only into the ``Authorization`` header; messages and logs never carry it.

The base URL is the argument, else ``RUNPOD_ENDPOINT_BASE_URL`` (the variable RunPod's SDK reads),
else ``https://api.runpod.ai/v2``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Callable

from ..core.errors import AuthError, AutopodError, UsageError
from ..core.log import redact, register_secret
from .rest import retry_after

log = logging.getLogger(__name__)

RUN_PAYLOAD_LIMIT = 10 * 1024 * 1024  # bytes of a /run request body (reference §1.6)
DEFAULT_BASE = "https://api.runpod.ai/v2"
BASE_ENV = "RUNPOD_ENDPOINT_BASE_URL"
ENDPOINT_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
RETRIES = 4  # tries after the first
BASE_DELAY_S = 1.0
MAX_DELAY_S = 30.0
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


class JobAPIError(AutopodError):
    """The job API failed (exit 1)."""


class SubmitLost(JobAPIError):
    """``/run`` may have reached RunPod but no answer came (a timeout, a connection reset after sending,
    an answer without a job id). The job may exist; sending again could run the prompt twice."""


class JobGone(JobAPIError):
    """``/status`` (or ``/cancel``) answered 404 for the job: unknown, or its result expired (retention, ttl)."""


class NoSuchEndpoint(JobAPIError, UsageError):
    """404 for the endpoint itself (exit 2)."""


class Unauthorized(JobAPIError, AuthError):
    """401/403: the API key is missing, wrong, or may not use this endpoint (exit 2)."""


class PayloadTooLarge(JobAPIError, UsageError):
    """The ``/run`` body is over RunPod's limit (exit 2); said before sending, or when RunPod answers 413."""


def payload_size(payload: dict[str, Any]) -> int:
    """Bytes of the ``/run`` body for ``payload``, as this client sends it."""
    return len(_encode(payload))


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def check_endpoint_id(value: Any) -> str:
    if not isinstance(value, str) or not ENDPOINT_ID_RE.match(value) or len(value) > 128:
        raise UsageError(f"invalid endpoint id {value!r}: expected letters, digits, '-' or '_'")
    return value


def check_job_id(value: Any) -> str:
    if not isinstance(value, str) or not JOB_ID_RE.match(value):
        raise UsageError(f"invalid job id {value!r}: expected letters, digits, '-' or '_'")
    return value


def default_base_url(creds: Any = None) -> str:
    """``RUNPOD_ENDPOINT_BASE_URL``, else ``<RUNPOD_API_BASE_URL>/v2`` when the account points somewhere
    other than RunPod (the simulator serves both planes on one host), else RunPod's job host."""
    from ..core.flags import env_setting  # noqa: PLC0415

    env = env_setting(BASE_ENV)  # set but empty or padded: exit 2, never "the default"
    if env:
        return env.rstrip("/")
    base = getattr(creds, "base_url", None)
    if base:
        return base.rstrip("/") + "/v2"
    return DEFAULT_BASE


class _Retry(Exception):
    def __init__(self, why: str, wait: float | None = None):
        super().__init__(why)
        self.why, self.wait = why, wait


class JobClient:
    """One endpoint's job API. ``sleep`` is injectable so tests do not wait."""

    def __init__(self, endpoint_id: str, *, api_key: str, base_url: str | None = None, timeout: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep, retries: int = RETRIES,
                 base_delay: float = BASE_DELAY_S):
        self.endpoint_id = check_endpoint_id(endpoint_id)
        if not api_key or any(c.isspace() or not c.isprintable() for c in api_key):
            raise AuthError("no usable RunPod API key for the job API: set RUNPOD_API_KEY")
        register_secret(api_key)
        self._key = api_key
        self.base = (base_url or default_base_url()).rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            raise UsageError(f"invalid job API base URL {self.base!r}: expected http(s)://...")
        self.timeout = timeout
        self.sleep = sleep
        self.retries = retries
        self.base_delay = base_delay
        self.requests_sent = 0
        self._session: Any = None

    def __repr__(self) -> str:  # never the key
        return f"JobClient({self.endpoint_id!r}, base_url={self.base!r})"

    @classmethod
    def for_account(cls, endpoint_id: str, creds: Any = None, **kw: Any) -> "JobClient":
        """A client with the configured key (``RUNPOD_API_KEY``, ~/.runpod/config.toml or the simulator)."""
        from ..core.config import api_credentials  # noqa: PLC0415

        creds = creds or api_credentials()
        kw.setdefault("base_url", default_base_url(creds))
        return cls(endpoint_id, api_key=creds.api_key, **kw)

    # -- operations ----------------------------------------------------------------------------

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``POST /run`` with ``{"input": ..., "policy": ...}``; returns ``{"id", "status"}``."""
        if not isinstance(payload, dict) or "input" not in payload:
            raise UsageError("a /run payload needs an 'input'")
        body = _encode(payload)
        if len(body) > RUN_PAYLOAD_LIMIT:
            raise PayloadTooLarge(f"the request for endpoint {self.endpoint_id} is {_mb(len(body))}, over RunPod's "
                                  f"/run limit of {_mb(RUN_PAYLOAD_LIMIT)}; send smaller inputs",
                                  data={"size": len(body), "limit": RUN_PAYLOAD_LIMIT})
        doc = self._call("run", "POST", "/run", body=body, resend=False)
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc["id"]:
            raise SubmitLost(f"RunPod endpoint {self.endpoint_id} run: the answer carried no job id; the job may "
                             "exist")
        return doc

    def status(self, job_id: str) -> dict[str, Any]:
        """``GET /status/{job_id}``: the job object (``status``, ``output``/``error``, ``delayTime``, ...)."""
        check_job_id(job_id)
        return self._job_call("status", "GET", f"/status/{job_id}", job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``POST /cancel/{job_id}``: removes a queued job; a running worker-comfyui prompt may go on."""
        check_job_id(job_id)
        return self._job_call("cancel", "POST", f"/cancel/{job_id}", job_id)

    def purge_queue(self) -> dict[str, Any]:
        """``POST /purge-queue``: ``{"removed": N, "status": ...}``; running jobs go on."""
        return self._dict(self._call("purge queue", "POST", "/purge-queue", body=b"{}", resend=True))

    def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"jobs": {...}, "workers": {...}}``."""
        return self._dict(self._call("health", "GET", "/health"))

    # -- transport -----------------------------------------------------------------------------

    def _job_call(self, op: str, method: str, path: str, job_id: str) -> dict[str, Any]:
        try:
            doc = self._call(op, method, path, body=b"{}" if method == "POST" else None, resend=True,
                             job_id=job_id)
        except _JobNotFound as e:
            # The runtime host's 404 body is not documented: ask /health whether the endpoint exists.
            self.health()
            raise JobGone(f"RunPod endpoint {self.endpoint_id}: job {job_id} is gone ({e.detail or '404'}): "
                          "unknown, or its result expired (RunPod keeps a /run result 30 minutes)",
                          data={"job_id": job_id}) from None
        return self._dict(doc)

    def _dict(self, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise JobAPIError(f"RunPod endpoint {self.endpoint_id}: the answer was not a JSON object")
        return doc

    def _call(self, op: str, method: str, path: str, *, body: bytes | None = None, resend: bool = True,
              job_id: str | None = None) -> Any:
        """One operation with retries. ``resend`` False (``/run``): send again only when RunPod surely did
        not take the request."""
        import requests  # noqa: PLC0415

        if self._session is None:
            self._session = requests.Session()
        url = f"{self.base}/{self.endpoint_id}{path}"
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(op, method, url, headers, body, resend, job_id)
            except _Retry as r:
                if attempt > self.retries:
                    raise JobAPIError(f"RunPod endpoint {self.endpoint_id} {op} failed after {attempt} attempts: "
                                      f"{r.why}; try again later") from None
                delay = r.wait if r.wait is not None else self.base_delay * (2 ** (attempt - 1))
                delay = min(MAX_DELAY_S, delay)
                log.warning("RunPod endpoint %s %s: %s; retrying in %.1fs (%d/%d)", self.endpoint_id, op, r.why,
                            delay, attempt, self.retries)
                self.sleep(delay)

    def _once(self, op: str, method: str, url: str, headers: dict[str, str], body: bytes | None, resend: bool,
              job_id: str | None) -> Any:
        import requests  # noqa: PLC0415

        self.requests_sent += 1
        try:
            r = self._session.request(method, url, headers=headers, data=body, timeout=self.timeout)
        except requests.ConnectionError as e:
            if resend or _never_sent(e):
                raise _Retry(f"connection failed: {type(e).__name__}") from None
            raise SubmitLost(f"RunPod endpoint {self.endpoint_id} run: no answer ({type(e).__name__}) after the "
                             "request was sent; the job may exist") from None
        except requests.Timeout as e:
            if resend:
                raise _Retry(f"no answer within {self.timeout:g}s") from None
            raise SubmitLost(f"RunPod endpoint {self.endpoint_id} run: no answer within {self.timeout:g}s "
                             f"({type(e).__name__}); the job may exist") from None
        except requests.RequestException as e:  # a broken answer (chunking, decoding) after the request went out
            if resend:
                raise _Retry(f"the answer broke off: {type(e).__name__}") from None
            raise SubmitLost(f"RunPod endpoint {self.endpoint_id} run: the answer broke off ({type(e).__name__}); "
                             "the job may exist") from None
        status = r.status_code
        if status == 429:
            raise _Retry("rate limited (429)", retry_after(r))
        if status >= 500:
            if resend or r.content:
                raise _Retry(f"server error {status}", retry_after(r))
            raise SubmitLost(f"RunPod endpoint {self.endpoint_id} run: server error {status} with no body; the job "
                             "may exist")
        if status < 400:
            if status == 204 or not r.content:
                return {}
            try:
                return r.json()
            except ValueError:
                if resend:
                    raise _Retry(f"an answer ({status}) that is not JSON") from None
                raise SubmitLost(f"RunPod endpoint {self.endpoint_id} run: the answer ({status}) was not JSON; the "
                                 "job may exist") from None
        detail = _detail(r)
        where = f"RunPod endpoint {self.endpoint_id} {op}"
        if status in (401, 403):
            raise Unauthorized(f"{where}: the API key was rejected ({status}"
                               + (f": {detail}" if detail else "") + "). Check RUNPOD_API_KEY or "
                               "~/.runpod/config.toml")
        if status == 404:
            if job_id is not None:
                raise _JobNotFound(detail)
            raise NoSuchEndpoint(f"{where}: no such endpoint (404"
                                 + (f": {detail}" if detail else "") + "); see `autopod endpoint.list`")
        if status == 413:
            raise PayloadTooLarge(f"{where}: the request is too large for RunPod (413; limit "
                                  f"{_mb(RUN_PAYLOAD_LIMIT)})" + (f": {detail}" if detail else ""))
        raise JobAPIError(f"{where} ({status})" + (f": {detail}" if detail else ""))


class _JobNotFound(Exception):
    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def _never_sent(e: Exception) -> bool:
    """Whether a connection error happened before any byte of the request left (refused, DNS, connect
    timeout): then sending again cannot make a second job."""
    import requests  # noqa: PLC0415
    from urllib3.exceptions import NewConnectionError  # noqa: PLC0415  (requests' own transport)

    if isinstance(e, requests.exceptions.ConnectTimeout):
        return True
    cause: Any = e.args[0] if e.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, NewConnectionError)


def _detail(r: Any) -> str:
    """The error text of an answer (``error``, ``detail``, ``message`` or the start of the body), redacted."""
    text = ""
    try:
        doc = r.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        text = str(doc.get("error") or doc.get("detail") or doc.get("message") or doc.get("title") or "")
    elif r.content:
        text = r.text
    text = " ".join(text.split())[:300]
    return redact(text)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


__all__ = ["JobClient", "JobAPIError", "SubmitLost", "JobGone", "NoSuchEndpoint", "Unauthorized",
           "PayloadTooLarge", "RUN_PAYLOAD_LIMIT", "TERMINAL", "payload_size", "default_base_url"]
