"""What both RunPod backends share: the checks on values before they are sent (ids, data centers,
cloud types), RunPod's no-capacity text (the GPU fallback's signal on GraphQL and REST v2 alike), and
how a create whose answer was lost finds its pod instead of making a second."""

from __future__ import annotations

import logging
import re
from typing import Any, Callable

from ..core.errors import TransientError, UsageError

log = logging.getLogger(__name__)

NO_CAPACITY_TEXT = "There are no longer any instances available"
# Ids are short alphanumeric strings (pods "5xpma5eg46tqjq", volumes "grvtso8ftn").
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DATACENTER_RE = re.compile(r"^[A-Z]{2,4}(-[A-Z0-9]{1,8}){1,3}$")
ENUM_RE = re.compile(r"^[A-Z][A-Z_]{0,31}$")
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
CLOUD_TYPES = ("SECURE", "COMMUNITY", "ALL")


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


def lost_create_finder(list_pods: Callable[[], list[dict[str, Any]]], name: str | None) -> Callable[[], Any]:
    """For the retry of a create: the live pod called ``name`` that a lost answer may have made, or None."""

    def find() -> dict[str, Any] | None:
        if not name:
            return None
        try:
            pods = list_pods()
        except TransientError:
            return None
        for p in pods:
            if p.get("name") == name and p.get("desiredStatus") != "TERMINATED":
                log.warning("pod %s (%s) appeared although its create answer was lost; using it", name, p["id"])
                return p
        return None

    return find
