"""Network volumes: list (with the pods using each), info, idempotent create and delete.

A network volume lives in one Secure Cloud data center and can be attached only
when a pod is created there; it outlives its pods, which is why models go on it.
"""

from __future__ import annotations

from typing import Any, Callable

from .errors import Conflict, NotFound, UsageError
from .flags import number
from .output import Outcome
from .runpod_api import check_datacenter, check_id

LIST_COLUMNS = [("id", "ID"), ("name", "NAME"), ("size", "SIZE"), ("datacenter", "DATACENTER"), ("pods", "PODS")]


def _record(v: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    using = [p for p in pods if p.get("networkVolumeId") == v.get("id") and p.get("desiredStatus") != "TERMINATED"]
    return {
        "id": v.get("id"),
        "name": v.get("name"),
        "size_gb": v.get("size"),
        "datacenter": v.get("dataCenterId"),
        "pods": [{"id": p["id"], "name": p.get("name"), "status": p.get("desiredStatus")} for p in using],
    }


def list_volumes(api: Any) -> list[dict[str, Any]]:
    """Every network volume with the live pods attached to it."""
    pods = api.list_pods()
    return [_record(v, pods) for v in api.list_volumes()]


def rows(volumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": v["id"], "name": v["name"], "size": f"{v['size_gb']} GB" if v["size_gb"] is not None else None,
             "datacenter": v["datacenter"], "pods": [p["name"] or p["id"] for p in v["pods"]]} for v in volumes]


def get_volume(api: Any, volume_id: str) -> dict[str, Any]:
    check_id(volume_id, "volume id")
    for v in list_volumes(api):
        if v["id"] == volume_id:
            return v
    raise NotFound(f"no network volume {volume_id!r} on this account (see `autopod volume.list`)", exit_code=2)


def ensure_volume(api: Any, name: str, size_gb: Any, datacenter: str) -> Outcome:
    """Create the volume unless one of that name exists in that data center (then ``ok``)."""
    if not name:
        raise UsageError("--name is required")
    size = number(size_gb, "--size-gb", int, minimum=1)
    if size is None:
        raise UsageError("--size-gb is required")
    check_datacenter(datacenter)
    for v in api.list_volumes():
        if v.get("name") == name and v.get("dataCenterId") == datacenter:
            note = "" if v.get("size") == size else f"; its size is {v.get('size')} GB, not {size} GB"
            return Outcome(False, f"volume {name} ({v['id']}) already exists in {datacenter}{note}",
                           key="volume", data=_record(v, []))
    v = api.create_volume(name, size, datacenter)
    return Outcome(True, f"created volume {name} ({v.get('id')}), {size} GB in {datacenter}",
                   key="volume", data=_record({"name": name, "size": size, "dataCenterId": datacenter, **v}, []))


def delete_volume(api: Any, volume_id: str, *, confirm: Callable[[dict[str, Any]], bool] | None = None) -> Outcome:
    """Delete the volume and the files on it. Refused while a pod uses it; a gone volume is ``ok``."""
    check_id(volume_id, "volume id")
    try:
        v = get_volume(api, volume_id)
    except NotFound:
        return Outcome(False, f"volume {volume_id} is already gone", key="volume", data=None)
    if v["pods"]:
        users = ", ".join(f"{p['name']} ({p['id']}, {p['status']})" for p in v["pods"])
        raise Conflict(f"volume {v['name']} ({volume_id}) is used by pod(s) {users}; "
                       "terminate them first with `autopod pod.kill`")
    if confirm is not None and not confirm(v):
        raise UsageError(f"not deleting volume {v['name']} ({volume_id})")
    api.delete_volume(volume_id)
    return Outcome(True, f"deleted volume {v['name']} ({volume_id}) in {v['datacenter']}", key="volume", data=v)
