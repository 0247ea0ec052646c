"""Network volumes: list (with the pods using each), info, idempotent create and delete.

A network volume lives in one Secure Cloud data center and can be attached only
when a pod is created there; it outlives its pods, which is why models go on it.

``volumes.json`` remembers the volume ids autopod has seen (for a week after they
are gone), so deleting a volume twice is "already gone" while a misspelt id is
an error. Like pods.json it is a cache: when it cannot be read, autopod warns and
treats every id it cannot find as unknown.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..core.errors import ConfigError, Conflict, NotFound, UsageError
from ..core.flags import number
from ..core.flags import text as flags_text
from ..core.output import Outcome, dump_json, emit_rows
from ..core.state import StateFile, check_fields, exclusive
from ..core.ui import warn
from .api import check_datacenter, check_id
from .gpus import check_known_datacenter

STATE = "volumes.json"
MAX_SIZE_GB = 4000  # RunPod's limit for a network volume
TOMBSTONE_S = 7 * 86400
CREATE_LOCK_TIMEOUT_S = 120.0


def _validate(data: dict[str, Any]) -> None:
    for vid, entry in data.items():
        check_fields(entry, f"volume {vid!r}", {"name": str, "seen_at": (int, float), "gone_at": (int, float)})


def _state() -> StateFile:
    return StateFile.named(STATE, validate=_validate)


def _update(change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to volumes.json; best effort, since the volumes exist whatever it says."""
    try:
        with _state().update() as data:
            change(data)
    except ConfigError as e:
        warn(f"{e}; carrying on without autopod's volume records")


def _seen(volumes: list[dict[str, Any]], *, complete: bool = True) -> None:
    """Record the ids in a listing; with ``complete``, ids missing from it are marked gone."""
    now = time.time()
    listed = {v.get("id") for v in volumes}

    def change(data: dict[str, Any]) -> None:
        for v in volumes:
            if v.get("id"):
                data[v["id"]] = {"name": v.get("name"), "seen_at": now}
        if complete:
            for vid in list(data):
                gone = data[vid].get("gone_at")
                if vid not in listed and not gone:
                    data[vid]["gone_at"] = now
                elif gone and now - float(gone) > TOMBSTONE_S:
                    del data[vid]

    _update(change)


def _known(volume_id: str) -> bool:
    try:
        return volume_id in _state().read()
    except ConfigError:
        return False

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
    vols = api.list_volumes()
    _seen(vols)
    return [_record(v, pods) for v in vols]


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
    """Create the volume unless one of that name exists in that data center (then ``ok``).

    The listing and the create run under a lock on (name, data center), so parallel
    runs of the same ``volume.create`` make one volume.
    """
    if name is None:
        raise UsageError("--name is required")
    name = flags_text(name, "--name", max_len=128)
    size = number(size_gb, "--size-gb", int, minimum=1, maximum=MAX_SIZE_GB)
    if size is None:
        raise UsageError("--size-gb is required")
    check_datacenter(datacenter)
    check_known_datacenter(datacenter, api.gpu_stock())
    with exclusive("volume-create", f"{datacenter}/{name}", timeout=CREATE_LOCK_TIMEOUT_S,
                   what=f"create volume {name} in {datacenter}"):
        for v in api.list_volumes():
            if v.get("name") == name and v.get("dataCenterId") == datacenter:
                note = "" if v.get("size") == size else f"; its size is {v.get('size')} GB, not {size} GB"
                return Outcome(False, f"volume {name} ({v['id']}) already exists in {datacenter}{note}",
                               key="volume", data=_record(v, []))
        v = api.create_volume(name, size, datacenter)
        _seen([{"name": name, **v}], complete=False)
    return Outcome(True, f"created volume {name} ({v.get('id')}), {size} GB in {datacenter}",
                   key="volume", data=_record({"name": name, "size": size, "dataCenterId": datacenter, **v}, []))


def delete_volume(api: Any, volume_id: str, *, confirm: Callable[[dict[str, Any]], bool] | None = None) -> Outcome:
    """Delete the volume and the files on it. Refused while a pod uses it; a gone volume is ``ok``."""
    check_id(volume_id, "volume id")
    try:
        v = get_volume(api, volume_id)
    except NotFound:
        if _known(volume_id):
            return Outcome(False, f"volume {volume_id} is already gone", key="volume", data=None)
        raise  # never seen: a typo, not a success
    if v["pods"]:
        users = ", ".join(f"{p['name']} ({p['id']}, {p['status']})" for p in v["pods"])
        raise Conflict(f"volume {v['name']} ({volume_id}) is used by pod(s) {users}; "
                       "terminate them first with `autopod pod.kill`")
    if confirm is not None and not confirm(v):
        raise UsageError(f"not deleting volume {v['name']} ({volume_id})")
    api.delete_volume(volume_id)
    _update(lambda data: data.setdefault(volume_id, {"name": v["name"]}).update(gone_at=time.time()))
    return Outcome(True, f"deleted volume {v['name']} ({volume_id}) in {v['datacenter']}", key="volume", data=v)


def render_list(vols: list[dict[str, Any]], *, as_json: bool) -> None:
    """``volume.list``, for the task and the console script's quick path alike."""
    if as_json:
        dump_json(vols)
    else:
        emit_rows(rows(vols), LIST_COLUMNS, as_json=False, empty="no network volumes")
