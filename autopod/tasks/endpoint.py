"""RunPod Serverless endpoints running worker-comfyui: RunPod queues the jobs, scales workers (to zero, too)
and bills by the second. `autopod comfy.run --endpoint NAME` runs batches on one."""

from __future__ import annotations

import sys
from typing import Any

from ..core.errors import UsageError
from ..core.output import dump_json, emit_object, emit_outcome, emit_rows, safe_text
from ..runpod import serverless
from ._base import command

UP_HELP = {
    "name": "endpoint name, also as the word after the task; selects the inventory endpoint spec of that name",
    "image": f"container image (default {serverless.WORKER_IMAGE}, worker-comfyui without models)",
    "gpus": "GPU names as for pods, comma-separated or repeated; mapped to RunPod's GPU pools, the pools' other "
            "types excluded (default: RTX A40, RTX A6000, RTX A5000)",
    "gpu-count": "GPUs per worker (default 1)",
    "workers-min": "workers that always run, and bill around the clock (default 0: scale to zero)",
    "workers-max": "most workers at once (default 3)",
    "idle-timeout": "seconds an idle worker waits for the next job before it stops (default 5)",
    "timeout": "seconds one job may run before RunPod ends it (default 600)",
    "flashboot": "FlashBoot on (the default): faster cold starts",
    "no-flashboot": "FlashBoot off",
    "volume-id": "network volume for the workers (/runpod-volume); the endpoint is pinned to its data center",
    "disk-gb": "container disk per worker in GB (default 20)",
    "env": "KEY=VALUE environment variable of the workers; repeatable",
    "force": "go ahead even if the minimum workers would take the next 24 hours past budget_usd_per_day",
    "dry-run": "print the request that would be sent; change nothing",
    "json": "print one JSON document",
}
REF_HELP = {"name": "endpoint name or id, also as the word after the task", "json": "print one JSON document"}


def _api() -> Any:
    return serverless.connect()


def _flags(name: Any, image: Any, gpus: Any, gpu_count: Any, workers_min: Any, workers_max: Any,
           idle_timeout: Any, timeout: Any, flashboot: bool, no_flashboot: bool, volume_id: Any, disk_gb: Any,
           env: Any) -> dict[str, Any]:
    if flashboot and no_flashboot:
        raise UsageError("give --flashboot or --no-flashboot, not both")
    return {"name": name, "image": image, "gpus": list(gpus or []), "gpu_count": gpu_count,
            "workers_min": workers_min, "workers_max": workers_max, "idle_timeout": idle_timeout,
            "timeout": timeout, "flashboot": True if flashboot else False if no_flashboot else None,
            "volume_id": volume_id, "disk_gb": disk_gb, "env": list(env or [])}


def _emit(outcome: Any, as_json: bool) -> None:
    if outcome.extra.get("dry_run") and not as_json and outcome.key == "request":
        dump_json(outcome.data)
    emit_outcome(outcome, as_json=as_json)
    if not as_json:
        for note in outcome.extra.get("notes") or []:
            print(f"  note: {safe_text(note)}", file=sys.stderr)


@command(help=UP_HELP, iterable=["gpus", "env"], plain_arg="name")
def create(c, name=None, image=None, gpus=None, gpu_count=None, workers_min=None, workers_max=None,
           idle_timeout=None, timeout=None, flashboot=False, no_flashboot=False, volume_id=None, disk_gb=None,
           env=None, force=False, dry_run=False, json=False):
    """Create an endpoint with every setting written out; `ok` (untouched) if one of that name exists."""
    flags = _flags(name, image, gpus, gpu_count, workers_min, workers_max, idle_timeout, timeout, flashboot,
                   no_flashboot, volume_id, disk_gb, env)
    _emit(serverless.create(flags, dry_run=dry_run, force=force, api=_api()), json)


@command(help=UP_HELP, iterable=["gpus", "env"], plain_arg="name")
def up(c, name=None, image=None, gpus=None, gpu_count=None, workers_min=None, workers_max=None,
       idle_timeout=None, timeout=None, flashboot=False, no_flashboot=False, volume_id=None, disk_gb=None,
       env=None, force=False, dry_run=False, json=False):
    """Converge: create the endpoint, or change only what differs from its inventory spec (or the flags)."""
    flags = _flags(name, image, gpus, gpu_count, workers_min, workers_max, idle_timeout, timeout, flashboot,
                   no_flashboot, volume_id, disk_gb, env)
    _emit(serverless.up(flags, dry_run=dry_run, force=force, api=_api()), json)


@command(name="list", aliases=["ls"], help={"json": "print one JSON document (a list of endpoints, each with "
                                                    "cost_per_hr_min and cost_per_hr_max)"})
def list_(c, json=False):
    """List endpoints: GPUs, workers min-max, and what each can cost per hour at its minimum and maximum."""
    emit_rows(serverless.list_endpoints(_api()), serverless.LIST_COLUMNS, as_json=json,
              empty="no endpoints (create one with `autopod endpoint.up --name NAME`)")


INFO_FIELDS = [("id", "ID"), ("name", "NAME"), ("image", "IMAGE"), ("gpus", "GPUS"), ("workers", "WORKERS MIN-MAX"),
               ("running", "RUNNING"), ("idle", "IDLE"), ("initializing", "INITIALIZING"),
               ("throttled", "THROTTLED"), ("unhealthy", "UNHEALTHY"), ("in_queue", "JOBS IN QUEUE"),
               ("in_progress", "JOBS IN PROGRESS"), ("idle_timeout_s", "IDLE TIMEOUT S"),
               ("timeout_s", "JOB TIMEOUT S"), ("flashboot", "FLASHBOOT"), ("volume_id", "VOLUME"),
               ("cost_per_hr_min", "$/HR MIN"), ("cost_per_hr_max", "$/HR MAX")]


@command(help=REF_HELP, plain_arg="name")
def info(c, name=None, json=False):
    """One endpoint: its workers (running, idle, initializing, throttled, unhealthy), its jobs, and notes."""
    data = serverless.info(_api(), name)
    if json:
        dump_json(data)
        return
    emit_object({**data, **data["workers_now"], **data["jobs"]}, as_json=False, fields=INFO_FIELDS)
    for note in data["notes"]:
        print(f"note: {safe_text(note)}")


@command(aliases=["rm"], help={**REF_HELP, "yes": "do not ask (needed when stdin is not a terminal)",
                               "dry-run": "say what would be deleted; change nothing"}, plain_arg="name")
def kill(c, name=None, yes=False, dry_run=False, json=False):
    """Delete an endpoint: its workers stop, its queued and running jobs are cancelled. `ok` if gone."""
    if not yes and not dry_run and not sys.stdin.isatty():
        raise UsageError("endpoint.kill deletes the endpoint and cancels its jobs; pass --yes to confirm "
                         "(stdin is not a terminal)")
    _emit(serverless.kill(_api(), name, dry_run=dry_run, confirm=None if yes else _confirm), json)


def _confirm(ep: dict) -> bool:
    print(f"delete endpoint {safe_text(ep.get('name'))} ({ep['id']}) and cancel its jobs? [y/N] ",
          end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


@command(help={**REF_HELP, "dry-run": "say how many jobs are queued; change nothing"}, plain_arg="name")
def purge(c, name=None, dry_run=False, json=False):
    """Empty the endpoint's queue; jobs already running go on. `ok` when nothing was queued."""
    _emit(serverless.purge(_api(), name, dry_run=dry_run), json)
