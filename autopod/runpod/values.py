"""Values every RunPod backend checks before sending them: ids, data centers, cloud types, and
RunPod's no-capacity text (the GPU fallback's signal on GraphQL and REST v2 alike)."""

from __future__ import annotations

import re
from typing import Any

from ..core.errors import UsageError

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
