"""Create, inspect, reach and stop RunPod GPU pods (GPU fallback, network volume, direct SSH)."""

from __future__ import annotations

import sys
from typing import Any

from ..core import chain
from ..core.errors import UsageError
from ..core.flags import number
from ..core.output import dump_json, emit_object, emit_outcome, emit_rows
from ..runpod import access, fleet as fleets, info as pod_info, lifecycle, registry, waits
from ..runpod import guard as guards
from ..runpod.api import connect
from ..runpod.gpus import gpu_table
from ..runpod.records import Pod, render_list
from ..runpod.spec import MAX_TIMEOUT_S, is_fleet
from ._base import command, exit_quietly, render_members

CREATE_HELP = {
    "name": "pod name, also as the word after the task; selects the inventory pod spec of that name "
            "(default: autopod-YYYY-MM-DD-NNN)",
    "gpu": "GPU type, by RunPod id or display name; repeat for fallback order (default: RTX A40, RTX A6000, RTX A5000)",
    "gpu-count": "GPUs per pod (default 1)",
    "cloud-type": "SECURE, COMMUNITY or ALL (default SECURE; network volumes need SECURE)",
    "datacenter": "data center id, e.g. EU-RO-1 (with a volume, the volume's data center wins)",
    "image": "container image (default runpod/comfyui:latest)",
    "template-id": "RunPod template id instead of --image",
    "disk-gb": "container disk in GB (default 50)",
    "volume-id": "network volume to attach (must exist on the account)",
    "volume-mount": "where the volume is mounted (default /workspace)",
    "port": "port to expose, e.g. 8188/http; repeatable (default 8188/http and 22/tcp; 22/tcp is always added)",
    "env": "KEY=VALUE environment variable; repeatable",
    "comfy-address": "ComfyUI's HOST:PORT inside the pod, the tunnel's remote end (default 127.0.0.1:8188)",
    "wait": "wait until the pod runs and its SSH endpoint answers (--no-wait to return at once)",
    "timeout": "seconds to wait before stopping the pod and failing (default 900)",
    "stop-after": "RunPod stops the pod after this long (90m, 2h, 1d, 1h30m) or at this ISO-8601 time, "
                  "whatever happens on this machine (inventory: stop_after)",
    "terminate-after": "RunPod terminates the pod after this long or at this time (inventory: terminate_after)",
    "idle-minutes": "install the idle watchdog in the pod: stop it after N minutes without ComfyUI activity, "
                    "with this machine off too; fractions allowed (inventory: idle_minutes)",
    "idle-action": "what the watchdog does: stop (default) or terminate (inventory: idle_action)",
    "force": "create even if the pod would take the next 24 hours past budget_usd_per_day",
    "dry-run": "print the request that would be sent; change nothing",
    "json": "print one JSON document",
}
POD_HELP = {"pod": "pod name or id, also as the word after the task (default: the only pod)",
            "fleet": "every member of fleet NAME (pods NAME-1 … NAME-N), in parallel: a line each and a summary; "
                     "exit 1 if any failed; --json: a list, one document per member",
            "json": "print one JSON document"}


def _flags(gpu: list[str], port: list[str], env: list[str], **kw: Any) -> dict[str, Any]:  # noqa: D103
    return {**kw, "gpus": list(gpu or []), "ports": list(port or []), "env": list(env or [])}


def _emit_create(outcome: Any, as_json: bool) -> None:
    if outcome.extra.get("dry_run") and not as_json and outcome.key == "request":
        dump_json(outcome.data)
    emit_outcome(outcome, as_json=as_json)


@command(help=CREATE_HELP, iterable=["gpu", "port", "env"], plain_arg="name")
def create(c, name=None, gpu=None, gpu_count=None, cloud_type=None, datacenter=None, image=None, template_id=None,
           disk_gb=None, volume_id=None, volume_mount=None, port=None, env=None, comfy_address=None, wait=True,
           timeout=None, stop_after=None, terminate_after=None, idle_minutes=None, idle_action=None, force=False,
           dry_run=False, json=False):
    """Create a pod: GPU fallback, network volume, direct SSH, cost guards; `ok` if a pod of that name exists."""
    flags = _flags(gpu, port, env, name=name, gpu_count=gpu_count, cloud_type=cloud_type, datacenter=datacenter,
                   image=image, template_id=template_id, disk_gb=disk_gb, volume_id=volume_id,
                   volume_mount=volume_mount, comfy_address=comfy_address, timeout=timeout, stop_after=stop_after,
                   terminate_after=terminate_after, idle_minutes=idle_minutes, idle_action=idle_action)
    _emit_create(lifecycle.create(flags, wait=wait, dry_run=dry_run, force=force), json)


@command(help={**{k: v for k, v in CREATE_HELP.items() if k != "wait"},
               "count": "a fleet: N pods named NAME-1 … NAME-N, brought up in parallel, GPU fallback per member "
                        "(inventory: count)",
               "surplus": "members past --count: stop (default) or kill (inventory: surplus)"},
         iterable=["gpu", "port", "env"], plain_arg="name")
def up(c, name=None, gpu=None, gpu_count=None, cloud_type=None, datacenter=None, image=None, template_id=None,
       disk_gb=None, volume_id=None, volume_mount=None, port=None, env=None, comfy_address=None, timeout=None,
       stop_after=None, terminate_after=None, idle_minutes=None, idle_action=None, force=False, dry_run=False,
       count=None, surplus=None, json=False):
    """Converge: create the pod (or --count pods) if missing, start if stopped, wait until reachable, guard."""
    flags = _flags(gpu, port, env, name=name, gpu_count=gpu_count, cloud_type=cloud_type, datacenter=datacenter,
                   image=image, template_id=template_id, disk_gb=disk_gb, volume_id=volume_id,
                   volume_mount=volume_mount, comfy_address=comfy_address, timeout=timeout, stop_after=stop_after,
                   terminate_after=terminate_after, idle_minutes=idle_minutes, idle_action=idle_action)
    if count is not None or surplus is not None or is_fleet(name):
        render_members(fleets.up(flags, count=count, surplus=surplus, dry_run=dry_run, force=force), json)
        return
    _emit_create(lifecycle.up(flags, dry_run=dry_run, force=force), json)


@command(name="list", aliases=["ls"], help={"fleet": "only the members of fleet NAME",
                                            "json": "print one JSON document (a list of pods, each with "
                                                    "cost_per_hr, uptime_s and spend_usd)"})
def list_(c, fleet=None, json=False):
    """List pods with their rate, uptime and spend since they started, and a total line."""
    api = connect()
    render_list(fleets.members(api, fleet) if fleet is not None else registry.list_pods(api), as_json=json)


@command(help=POD_HELP, plain_arg="pod")
def info(c, pod=None, fleet=None, json=False):
    """One pod in detail: image, ports, volume, SSH commands, estimated spend."""
    if (fleet := chain.fleet_target(fleet, pod)) is not None:
        render_members(fleets.info(fleet), json)
        return
    data = pod_info.pod_info(connect(), pod)
    if json:
        dump_json(data)
    else:
        emit_object(pod_info.info_view(data), as_json=False, fields=pod_info.INFO_FIELDS)


@command(help={"pod": POD_HELP["pod"], "command": "run this command without a terminal; exit with its exit code",
               "json": "with --command: print one JSON document with exit_code, stdout and stderr"}, plain_arg="pod")
def ssh(c, pod=None, command=None, json=False):
    """Open a shell on the pod with OpenSSH over its direct endpoint (port forwarding and scp work)."""
    result = access.ssh(connect(), pod, command, capture=json)
    if json:
        dump_json(result)
        result = result["exit_code"]
    if result:
        exit_quietly(result)


@command(help=POD_HELP, plain_arg="pod")
def stop(c, pod=None, fleet=None, json=False):
    """Stop the pod (and its tunnel); `ok` if already stopped. Its volume and disk are kept."""
    if (fleet := chain.fleet_target(fleet, pod)) is not None:
        render_members(fleets.stop(fleet), json)
        return
    emit_outcome(lifecycle.stop_pod(connect(), pod), as_json=json)


@command(help={**POD_HELP, "wait": "wait until reachable (--no-wait to return at once)",
               "timeout": "seconds to wait before stopping it again and failing (default 900)",
               "force": "start even if the pod would take the next 24 hours past budget_usd_per_day"},
         plain_arg="pod")
def start(c, pod=None, fleet=None, wait=True, timeout=None, force=False, json=False):
    """Resume a stopped pod with its GPU count and its watchdog; `ok` if already running."""
    secs = number(timeout, "--timeout", int, minimum=1, maximum=MAX_TIMEOUT_S)
    if (fleet := chain.fleet_target(fleet, pod)) is not None:
        render_members(fleets.start(fleet, wait=wait, timeout=secs, force=force), json)
        return
    emit_outcome(lifecycle.start_pod(connect(), pod, wait=wait, timeout=secs, force=force), as_json=json)


@command(help={"pod": POD_HELP["pod"], "fleet": POD_HELP["fleet"],
               "idle-minutes": "stop the pod after N minutes with ComfyUI idle: no prompt running or pending, none "
                               "finished, nothing connected; fractions allowed (inventory: idle_minutes)",
               "action": "stop (default: the volume and disk are kept) or terminate (inventory: idle_action)",
               "dead-minutes": "a ComfyUI that does not answer for this long counts as dead, and the pod is "
                               "stopped too (default: 30 or the idle minutes, whichever is longer)",
               "status": "show the watchdog's state: its last check, what keeps the pod busy, the time left, and "
                         "why it acted; exit 1 when none runs",
               "off": "remove the watchdog",
               "json": POD_HELP["json"]}, plain_arg="pod")
def guard(c, pod=None, fleet=None, idle_minutes=None, action=None, dead_minutes=None, status=False, off=False,
          json=False):
    """Install the idle watchdog in the pod; it stops the pod when ComfyUI is idle, with this machine off too."""
    if status and off:
        raise UsageError("give --status or --off, not both")
    if (status or off) and any(v is not None for v in (idle_minutes, action, dead_minutes)):
        raise UsageError("--status and --off take no watchdog settings")
    if (fleet := chain.fleet_target(fleet, pod)) is not None:
        render_members(fleets.guard(fleet, idle_minutes=idle_minutes, action=action, dead_minutes=dead_minutes,
                                  status=status, off=off), json)
        return
    if status:
        doc = guards.status(connect(), pod)
        if json:
            dump_json(doc)
        else:
            print(f"pod {doc['name']} ({doc['pod']}): watchdog {guards.summary(doc)}")
        if not doc.get("running"):
            exit_quietly(1)
        return
    if off:
        emit_outcome(guards.remove(connect(), pod), as_json=json)
        return
    emit_outcome(guards.ensure(connect(), pod, idle_minutes=idle_minutes, action=action, dead_minutes=dead_minutes),
                 as_json=json)


@command(aliases=["rm"], help={**POD_HELP, "yes": "do not ask (needed when stdin is not a terminal)"},
         plain_arg="pod")
def kill(c, pod=None, fleet=None, yes=False, json=False):
    """Terminate the pod; its container disk is lost (network volumes are kept). `ok` if already gone."""
    if not yes and not sys.stdin.isatty():
        raise UsageError("pod.kill terminates the pod for good; pass --yes to confirm (stdin is not a terminal)")
    if (fleet := chain.fleet_target(fleet, pod)) is not None:
        render_members(fleets.kill(fleet, confirm=None if yes else _confirm_fleet_kill), json)
        return
    emit_outcome(lifecycle.kill_pod(connect(), pod, confirm=None if yes else _confirm_kill), as_json=json)


def _confirm_fleet_kill(fleet: str, pods: list[Pod]) -> bool:
    print(f"terminate the {len(pods)} pod(s) of fleet {fleet} ({', '.join(p.name for p in pods)})? "
          f"Their container disks are lost. [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _confirm_kill(pod: Pod) -> bool:
    print(f"terminate pod {pod.name} ({pod.id}, {pod.status})? Its container disk is lost. [y/N] ",
          end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


@command(help={"pod": POD_HELP["pod"], "fleet": POD_HELP["fleet"], "timeout": "seconds to wait (default 900)",
               "json": POD_HELP["json"]}, plain_arg="pod")
def wait(c, pod=None, fleet=None, timeout=None, json=False):
    """Wait until the pod is RUNNING and its SSH endpoint answers; exit 1 on timeout."""
    secs = number(timeout, "--timeout", int, minimum=1, maximum=MAX_TIMEOUT_S)
    if (fleet := chain.fleet_target(fleet, pod)) is not None:
        render_members(fleets.wait(fleet, secs), json)
        return
    ready = waits.wait(connect(), pod, secs)
    if json:
        dump_json(ready.to_dict())
    else:
        print(f"ok: pod {ready.name} ({ready.id}) is ready: ssh port {ready.ssh_direct[1]} on {ready.ssh_direct[0]}")


@command(help={"json": "print one JSON document"})
def gpus(c, json=False):
    """GPU types with memory, secure/community $/hr and stock (best first)."""
    rows = gpu_table(connect())
    if json:
        dump_json(rows)
    else:
        emit_rows(rows, [("name", "GPU"), ("id", "ID"), ("memory_gb", "MEM GB"), ("secure_price", "SECURE $/HR"),
                         ("community_price", "COMMUNITY $/HR"), ("stock", "STOCK"), ("datacenters", "IN STOCK AT")],
                  as_json=False)
