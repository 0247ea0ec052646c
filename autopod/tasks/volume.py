"""Network volumes: where models live between pods (one data center each, Secure Cloud only)."""

from __future__ import annotations

import sys

from ..core.errors import UsageError
from ..core.output import dump_json, emit_object, emit_outcome
from ..runpod import volumes
from ._base import command


def _api():
    from ..runpod.api import connect

    return connect()


@command(name="list", aliases=["ls"], help={"json": "print one JSON document (a list of volumes)"})
def list_(c, json=False):
    """List network volumes: ID, NAME, SIZE, DATACENTER and the PODS using each."""
    volumes.render_list(volumes.list_volumes(_api()), as_json=json)


@command(help={"id": "volume id, also as the word after the task", "json": "print one JSON document"},
         plain_arg="id")
def info(c, id=None, json=False):
    """One network volume and the pods using it."""
    if not id:
        raise UsageError("--id is required (see `autopod volume.list`)")
    v = volumes.get_volume(_api(), id)
    if json:
        dump_json(v)
    else:
        view = {**volumes.rows([v])[0], "pods": [f"{p['name']} ({p['id']}, {p['status']})" for p in v["pods"]]}
        emit_object(view, as_json=False, fields=volumes.LIST_COLUMNS)


@command(help={"name": "volume name", "size-gb": "size in GB", "datacenter": "Secure Cloud data center, e.g. EU-RO-1",
               "json": "print one JSON document"})
def create(c, name=None, size_gb=None, datacenter=None, json=False):
    """Create a network volume; `ok` if one of that name exists in that data center."""
    if not (name and size_gb and datacenter):
        raise UsageError("volume.create needs --name, --size-gb and --datacenter")
    emit_outcome(volumes.ensure_volume(_api(), name, size_gb, datacenter), as_json=json)


@command(aliases=["rm"], help={"id": "volume id, also as the word after the task",
                               "yes": "do not ask (needed when stdin is not a terminal)",
                               "json": "print one JSON document"}, plain_arg="id")
def delete(c, id=None, yes=False, json=False):
    """Delete a network volume and its files; refused while a pod uses it. `ok` if already gone."""
    if not id:
        raise UsageError("--id is required (see `autopod volume.list`)")
    if not yes and not sys.stdin.isatty():
        raise UsageError("volume.delete destroys the files on the volume; pass --yes to confirm "
                         "(stdin is not a terminal)")
    emit_outcome(volumes.delete_volume(_api(), id, confirm=None if yes else _confirm), as_json=json)


def _confirm(v: dict) -> bool:
    print(f"delete volume {v['name']} ({v['id']}, {v['size_gb']} GB) and every file on it? [y/N] ",
          end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")
