"""RunPod's REST v2 API in the stand-in, served from the same world as its GraphQL.

The paths, request rules and error bodies follow the reference (REST v2 and section A7, as
RunPod's own REST v2 client sends them): closed request bodies (an unknown key is 422),
``gpu.count`` sent or no capacity, ``cloud`` without ALL, 204 for terminate and delete, 409 for
an action the pod's status does not allow, RFC 9457 problem bodies. The mutations go through the
same resolvers as GraphQL (``_Api``), so stock, volumes and pods behave alike on both.

RunPod publishes no response schema for v2; the shapes here follow the operation descriptions
(``ssh.direct``, ``runtime.ports``, ``cost``) and name the catalogs' lists after their paths.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote

from .runpod_facts import NO_CAPACITY, ApiError, _stock_status, pool_of, serverless_price

CREATE_KEYS = {"name", "image", "templateId", "args", "disk", "ports", "env", "registry", "cloud", "dataCenterIds",
               "gpu", "cpu", "mounts", "startSsh", "startJupyter", "globalNetworking"}
GPU_KEYS = {"id", "count", "allowedCudaVersions", "minCudaVersion", "minRamPerGpu", "minVcpuCountPerGpu"}
VOLUME_KEYS = {"name", "size", "dataCenter", "type"}
ACTIONS_BY_STATUS = {"RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"]}
STOCK = {"High": "HIGH", "Medium": "MEDIUM", "Low": "LOW", "None": "NONE"}
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Problem(Exception):
    """An RFC 9457 answer."""

    TITLES = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 404: "Not Found",
              409: "Conflict", 410: "Gone", 422: "Unprocessable Entity", 429: "Too Many Requests"}

    def __init__(self, status: int, detail: str, errors: list[str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors

    def doc(self) -> dict[str, Any]:
        doc = {"title": self.TITLES.get(self.status, "Error"), "status": self.status, "detail": self.detail}
        if self.errors:
            doc["errors"] = self.errors
        return doc


def handle(api: Any, world: Any, method: str, path: str, query: str, body: Any) -> tuple[int, Any]:
    """One REST v2 request, with the world's lock held. Returns (status, JSON document or None)."""
    q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    parts = [unquote(p) for p in path.strip("/").split("/")][1:]  # after "v2"
    try:
        api._enforce_deadlines()
        return _route(api, world, method, parts, q, body)
    except ApiError as e:
        status = 404 if "not found" in str(e).lower() else 400
        if str(e) == NO_CAPACITY or "not enough free GPUs" in str(e):
            status = 400
        return status, Problem(status, str(e)).doc()
    except Problem as p:
        return p.status, p.doc()


def _route(api: Any, world: Any, method: str, parts: list[str], q: dict[str, str], body: Any) -> tuple[int, Any]:
    head = parts[0] if parts else ""
    if head == "pods":
        if len(parts) == 1 and method == "GET":
            return 200, {"pods": [pod_view(api, world, p) for p in world.pods.values()]}
        if len(parts) == 1 and method == "POST":
            return 201, create_pod(api, world, body)
        pod = _pod(world, parts[1])
        if len(parts) == 2 and method == "GET":
            return 200, pod_view(api, world, pod)
        if len(parts) == 2 and method == "DELETE":
            api.podTerminate(None, {"podId": pod["id"]})
            return 204, None
        if len(parts) == 3 and parts[2] == "action" and method == "POST":
            return action(api, world, pod, body)
    if head == "network-volumes":
        if len(parts) == 1 and method == "GET":
            return 200, {"networkVolumes": [volume_view(k, v) for k, v in world.network_volumes.items()]}
        if len(parts) == 1 and method == "POST":
            return 201, create_volume(api, world, body)
        vid = parts[1]
        if vid not in world.network_volumes:
            raise Problem(404, f"Network volume {vid} not found.")
        if len(parts) == 2 and method == "GET":
            return 200, volume_view(vid, world.network_volumes[vid])
        if len(parts) == 2 and method == "DELETE":
            api.deleteNetworkVolume(None, {"id": vid})
            return 204, None
    if head == "serverless":
        return api.serverless.rest(method, parts[1:], q, body)
    if head == "catalog" and len(parts) >= 2 and method == "GET":
        if parts[1] == "gpus":
            return 200, gpu_catalog(api, world, q, parts[2] if len(parts) > 2 else None)
        if parts[1] == "datacenters":
            return 200, {"dataCenters": [dc_view(api, k, dc) for k, dc in world.data_centers.items()
                                         if dc.get("secureCloud")]}
    raise Problem(404, "No such route.")


def _pod(world: Any, pid: str) -> dict[str, Any]:
    pod = world.pods.get(pid)
    if pod is None:
        raise Problem(404, f"Pod {pid} not found.")
    return pod


def _closed(body: Any, keys: set[str], where: str = "$") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Problem(422, "Request validation failed.", [f"{where}: got {type(body).__name__}, want object"])
    unknown = sorted(set(body) - keys)
    if unknown:
        raise Problem(422, "Request validation failed.",
                      [f"{where}.{k}: additional properties are not allowed" for k in unknown])
    return body


# --- pods ---------------------------------------------------------------------------------


def create_pod(api: Any, world: Any, body: Any) -> dict[str, Any]:
    b = _closed(body, CREATE_KEYS)
    errors = []
    if not isinstance(b.get("name"), str) or not b["name"]:
        errors.append("$.name: is required")
    if not b.get("image") and not b.get("templateId"):
        errors.append("$.image: is required unless templateId is given")
    if b.get("cloud", "SECURE") not in ("SECURE", "COMMUNITY"):
        errors.append("$.cloud: value must be one of 'SECURE', 'COMMUNITY'")
    gpu = b.get("gpu")
    if not isinstance(gpu, dict) or not isinstance(gpu.get("id"), str):
        errors.append("$.gpu.id: is required")
    elif set(gpu) - GPU_KEYS:
        errors += [f"$.gpu.{k}: additional properties are not allowed" for k in sorted(set(gpu) - GPU_KEYS)]
    elif "count" in gpu and (not isinstance(gpu["count"], int) or gpu["count"] < 1):
        errors.append("$.gpu.count: must be >= 1")
    if not isinstance(b.get("env", {}), dict) or not all(isinstance(v, str) for v in (b.get("env") or {}).values()):
        errors.append("$.env: want object of strings")
    if not isinstance(b.get("ports", []), list):
        errors.append("$.ports: want array")
    mounts = b.get("mounts") or {}
    network = mounts.get("network") if isinstance(mounts, dict) else None
    if network is not None and (not isinstance(network, list) or len(network) > 1
                                or any(not isinstance(m, dict) or not m.get("volumeId") or not m.get("path")
                                       for m in network)):
        errors.append("$.mounts.network: at most one {volumeId, path}, both required")
    if errors:
        raise Problem(422, "Request validation failed.", errors)
    if "count" not in gpu:
        # RunPod's own client: without gpu.count the scheduler matched no machine (CHANGELOG 3.3.0).
        raise Problem(400, NO_CAPACITY)
    dcs = b.get("dataCenterIds") or []
    inp = {
        "name": b["name"], "imageName": b.get("image"), "templateId": b.get("templateId"),
        "gpuTypeId": gpu["id"], "gpuCount": gpu["count"], "cloudType": b.get("cloud", "SECURE"),
        "containerDiskInGb": b.get("disk"), "dockerArgs": b.get("args") or "",
        "ports": ",".join(b.get("ports") or []), "startSsh": bool(b.get("startSsh")),
        "env": [{"key": k, "value": v} for k, v in (b.get("env") or {}).items()],
        "dataCenterId": dcs[0] if len(dcs) == 1 else None,
    }
    if network:
        inp["networkVolumeId"] = network[0]["volumeId"]
        inp["volumeMountPath"] = network[0]["path"]
    created = api.podFindAndDeployOnDemand(None, inp)
    return pod_view(api, world, world.pods[created["id"]], fresh=True)


def action(api: Any, world: Any, pod: dict[str, Any], body: Any) -> tuple[int, Any]:
    b = _closed(body, {"action"})
    what = b.get("action")
    if what not in ("start", "stop", "restart", "terminate"):
        raise Problem(422, "Request validation failed.",
                      ["$.action: value must be one of 'start', 'stop', 'restart', 'terminate'"])
    allowed = ACTIONS_BY_STATUS.get(pod.get("desiredStatus"), ["terminate"])
    if what not in allowed:
        raise Problem(409, f"Action {what} is not allowed while the pod is {pod.get('desiredStatus')}; "
                           f"allowed: {', '.join(allowed)}.")
    if what == "terminate":
        api.podTerminate(None, {"podId": pod["id"]})
        return 204, None
    if what == "stop":
        api.podStop(None, {"podId": pod["id"]})
    elif what == "start":
        api.podResume(None, {"podId": pod["id"], "gpuCount": pod.get("gpuCount")})
    else:
        api.podStop(None, {"podId": pod["id"]})
        api.podResume(None, {"podId": pod["id"], "gpuCount": pod.get("gpuCount")})
    return 200, pod_view(api, world, pod)


def pod_view(api: Any, world: Any, pod: dict[str, Any], *, fresh: bool = False) -> dict[str, Any]:
    """A pod as REST v2 shows it: status, ssh.proxy/ssh.direct, runtime ports, cost. ``fresh``: the
    create answer, whose container has not started yet."""
    g = api.pod_view(pod)
    runtime = None if fresh else api.runtime(pod)  # counts a read, as GraphQL's does
    status = pod.get("desiredStatus") or "RUNNING"
    env = {}
    for item in g["env"]:
        k, _, v = str(item).partition("=")
        env[k] = v
    direct = None
    rt = None
    if runtime:
        rt = {"uptime": runtime["uptimeInSeconds"],
              "gpus": [{"id": x["id"], "util": x["gpuUtilPercent"], "memoryUtil": x["memoryUtilPercent"]}
                       for x in runtime["gpus"]],
              "cpu": 0.0, "memory": 0.0,
              "ports": [{"ip": p["ip"], "private": p["privatePort"], "public": p["publicPort"], "type": p["type"]}
                        for p in runtime["ports"]]}
        ssh = next((p for p in runtime["ports"] if p["privatePort"] == 22 and p["isIpPublic"]), None)
        if ssh:
            direct = {"host": ssh["ip"], "port": ssh["publicPort"], "username": "root",
                      "command": f"ssh root@{ssh['ip']} -p {ssh['publicPort']}"}
    gpu_type = world.gpu_types.get(pod.get("gpuTypeId") or "") or {}
    mounts: dict[str, Any] = {}
    if pod.get("networkVolumeId"):
        mounts["network"] = [{"volumeId": pod["networkVolumeId"], "path": pod.get("volumeMountPath") or ""}]
    host = pod.get("podHostId")
    return {
        "id": pod["id"], "name": pod.get("name"), "status": status,
        "actions": ACTIONS_BY_STATUS.get(status, []),
        "image": pod.get("imageName"), "args": pod.get("dockerArgs") or "", "disk": pod.get("containerDiskInGb"),
        "ports": [p for p in (pod.get("ports") or "").split(",") if p], "env": env, "mounts": mounts,
        "gpu": {"id": pod.get("gpuTypeId"), "count": pod.get("gpuCount"), "displayName": gpu_type.get("displayName"),
                "memory": gpu_type.get("memoryInGb")},
        "cloud": pod.get("cloudType") or "SECURE", "dataCenterId": pod.get("dataCenterId"),
        "ssh": {"proxy": {"host": "ssh.runpod.io", "port": 22, "username": host,
                          "command": f"ssh {host}@ssh.runpod.io"} if host else None,
                "direct": direct},
        "cost": g["costPerHr"], "runtime": rt, "createdAt": g["createdAt"], "startedAt": g["lastStartedAt"],
        "locked": False, "template": None, "globalNetworking": {"enabled": False},
    }


# --- volumes ------------------------------------------------------------------------------


def volume_view(vid: str, vol: dict[str, Any]) -> dict[str, Any]:
    return {"id": vid, "name": vol.get("name"), "size": vol.get("size"), "dataCenter": vol.get("dataCenterId"),
            "type": vol.get("type") or "STANDARD"}


def create_volume(api: Any, world: Any, body: Any) -> dict[str, Any]:
    b = _closed(body, VOLUME_KEYS)
    errors = []
    if not isinstance(b.get("name"), str) or not b["name"].strip():
        errors.append("$.name: is required")
    if not isinstance(b.get("size"), int) or not 10 <= b["size"] <= 4096:
        errors.append("$.size: must be an integer from 10 to 4096")
    if not isinstance(b.get("dataCenter"), str):
        errors.append("$.dataCenter: is required")
    if b.get("type", "STANDARD") not in ("STANDARD", "HIGH_PERFORMANCE"):
        errors.append("$.type: value must be one of 'STANDARD', 'HIGH_PERFORMANCE'")
    if errors:
        raise Problem(422, "Request validation failed.", errors)
    made = api.createNetworkVolume(None, {"name": b["name"], "size": b["size"], "dataCenterId": b["dataCenter"]})
    return volume_view(made["id"], world.network_volumes[made["id"]])


# --- catalogs -----------------------------------------------------------------------------


def gpu_catalog(api: Any, world: Any, q: dict[str, str], one: str | None) -> Any:
    include = q.get("include")
    if include not in (None, "AVAILABILITY"):
        raise Problem(422, "Request validation failed.", ["$.include: value must be 'AVAILABILITY'"])
    product = q.get("product")
    if include and product not in ("POD", "CLUSTER", "SERVERLESS"):
        raise Problem(400, "product is required with include=AVAILABILITY: POD, CLUSTER or SERVERLESS.")
    if not include and (product or q.get("count") or q.get("cloud")):
        raise Problem(400, "product, count and cloud are valid only with include=AVAILABILITY.")
    count = int(q.get("count") or 1)
    cloud = q.get("cloud") or "SECURE"
    out = []
    for gid, g in world.gpu_types.items():
        if one is not None and gid != one:
            continue
        item = {"id": gid, "displayName": g.get("displayName"), "memoryInGb": g.get("memoryInGb"),
                "maxGpuCount": g.get("maxGpuCount"), "securePrice": g.get("securePrice"),
                "communityPrice": g.get("communityPrice"), "pool": pool_of(gid, g),
                "price": {"secure": g.get("securePrice"), "community": g.get("communityPrice"),
                          "serverless": serverless_price(gid, g)},
                "cudaVersions": ["12.4", "12.8"]}
        if include:
            dcs = []
            for dc_id, dc in world.data_centers.items():
                if bool(dc.get("secureCloud")) != (cloud == "SECURE"):
                    continue
                free = int((dc.get("stock") or {}).get(gid, 0))
                dcs.append({"id": dc_id, "availability": _level(free, count)})
            best = max((d["availability"] for d in dcs), key=lambda a: ["NONE", "LOW", "MEDIUM", "HIGH"].index(a),
                       default="NONE")
            item.update({"availability": best, "dataCenters": dcs})
        out.append(item)
    if one is not None:
        if not out:
            raise Problem(404, f"GPU type {one} not found.")
        return out[0]
    return {"gpus": out}


def _level(free: int, count: int) -> str:
    return STOCK.get(_stock_status(free, count) or "None", "NONE")


def dc_view(api: Any, dc_id: str, dc: dict[str, Any]) -> dict[str, Any]:
    return {"id": dc_id, "name": dc.get("name") or dc_id, "location": dc.get("location"), "region": "EUROPE"
            if dc_id.startswith("EU") else "NORTH_AMERICA", "networkVolumeTypes": ["STANDARD"]}
