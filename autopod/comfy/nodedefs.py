"""A pod's node definitions (ComfyUI's ``GET /object_info``) for planning a run: kept per pod, and
checked class by class against the server before a plan is used.

Planning (converting an editor file, checking every ``--set``, finding seed inputs, knowing which
input files the pod has) reads the definitions. The whole list is 0.5 MB on a bare ComfyUI 0.3.64
and several MB with custom node packs, and ComfyUI builds it anew for every request (each node's
``INPUT_TYPES``, every model folder listed), so fetching it for every run was the largest cost of a
small run after start-up. It is kept under ``AUTOPOD_HOME/cache/object_info/``, one file per pod
and ComfyUI address.

The kept copy is never trusted as it is. :func:`plan_checked` plans against it through
:class:`Consulted`, which records each class that planning looks up (present or not) and notes a
read of the whole list. Then, before the plan is used and before a refusal is reported, each of
those classes is asked of the server again, several at once: ``GET /object_info/<class>`` is built
by the same function ComfyUI builds the full list from, and answers ``{}`` for a class it lacks.
When every answer equals the kept entry (or both are absent), the plan is exactly the one the
server's current definitions give, since planning read nothing else of them. When any differs (a
model file added or removed, an input file gone, a ComfyUI restarted with other custom nodes), or
planning read the whole list, the full list is fetched, kept, and the plan made again on it. So a
stale copy can neither let through a value the server would refuse nor refuse one it takes.

ComfyUI offers no cheaper signal that is sound: nothing in ``/system_stats``, ``/features`` or the
WebSocket's first message changes on a restart; ``/extensions`` lists only node packs that ship
JavaScript and does not change when a pack's ``INPUT_TYPES`` does; ``/models/<folder>`` and
``/experiment/models/<folder>`` take a request per model folder (20 on a bare install) and say
nothing of input files or lists a custom node builds. The per-class answers cover all of these,
for exactly the classes a plan uses.

A Serverless endpoint has no ``/object_info``: its batches are planned on the definitions last seen on a
pod of the same image. So each copy a pod's definitions are kept in is also kept under the pod's image
(``image_key``), when autopod made the pod and knows it.

A kept file that does not parse or has the wrong shape is a cache miss: it is copied aside
(``<file>.corrupt-<hash>``, as state files are), a line on stderr says so, and the definitions are
fetched again. One that parses but trips planning up is replaced by the server's list the same way
a stale one is. A copy nobody used for 30 days is removed when another is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from ..core.errors import AutopodError

log = logging.getLogger(__name__)

T = TypeVar("T")
VERSION = 1
LOCK_TIMEOUT_S = 30.0
CHECK_THREADS = 8  # per-class checks in flight at once (each is one small request)
SEQUENTIAL_CHECKS = 3  # up to this many classes are checked one after the other
PRUNE_DAYS = 30  # a kept copy nobody used for this long is removed when another is written


class Consulted(dict):
    """The kept definitions, recording what planning reads: ``names`` looked up (``get``, ``[]``,
    ``in``), and ``whole`` once anything reads the list as a whole (iteration, length, a copy)."""

    def __init__(self, data: dict[str, Any]):
        super().__init__(data)
        self.names: set[str] = set()
        self.whole = False

    def _seen(self, key: Any) -> None:
        if isinstance(key, str):  # a class name is a string; any other key is absent here and on the server
            self.names.add(key)

    def __getitem__(self, key: Any) -> Any:
        self._seen(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._seen(key)
        return super().get(key, default)

    def __contains__(self, key: Any) -> bool:
        self._seen(key)
        return super().__contains__(key)

    def _all(self) -> None:
        self.whole = True

    def __iter__(self) -> Any:
        self._all()
        return super().__iter__()

    def __len__(self) -> int:
        self._all()
        return super().__len__()

    def keys(self) -> Any:
        self._all()
        return super().keys()

    def values(self) -> Any:
        self._all()
        return super().values()

    def items(self) -> Any:
        self._all()
        return super().items()

    def copy(self) -> dict[str, Any]:
        self._all()
        return dict(super().items())

    def __reduce_ex__(self, protocol: Any) -> Any:  # copy.deepcopy, pickle
        self._all()
        return dict, (dict(super().items()),)

    def __setitem__(self, key: Any, value: Any) -> None:  # planning never writes; if it did, check it all
        self._all()
        super().__setitem__(key, value)


def plan_checked(conn: Any, plan: Callable[[dict[str, Any]], T], *,
                 also: Callable[[T], Iterable[str]] = lambda _result: (),
                 fresh: dict[str, Any] | None = None, kept: dict[str, Any] | None = None) -> tuple[T, dict[str, Any]]:
    """``plan(object_info)`` with definitions no older than the server's: (its result, the definitions
    it used). ``also(result)`` names classes read after planning (LoadImage's file list for uploads),
    checked as well. A refusal (any AutopodError of ``plan``) is raised only once checked the same way.
    ``fresh``: definitions the caller has just fetched (and kept), planned on as they are. ``kept``: the
    kept copy as the caller has just read it (``load``), checked like one read here.

    ``conn`` is a ``run.Connection``: ``conn.call(fn)`` reaches the pod's ComfyUI, ``conn.endpoint``
    says which one, ``conn.note`` prints a line on stderr."""
    if fresh is not None:  # just fetched from the server (and kept): nothing to check it against
        return plan(fresh), fresh
    key = cache_key(conn)
    if kept is None:
        kept = load(key, note=conn.note)
    if kept is not None:
        view = Consulted(kept)
        result: T | None = None
        refusal: AutopodError | None = None
        try:
            result = plan(view)
        except AutopodError as e:
            refusal = e
        except Exception:  # a kept copy that parses but trips planning up: the server's own list decides
            log.debug("planning on the kept node definitions failed; fetching them all", exc_info=True)
            view.whole = True
        names = set(view.names) | (set(also(result)) if refusal is None and not view.whole else set())  # type: ignore[arg-type]
        if not view.whole and _unchanged(conn, kept, names):
            if refusal is not None:
                raise refusal
            return result, kept  # type: ignore[return-value]
        log.debug("kept node definitions differ from the server's for %s; fetching them all",
                  "the whole list" if view.whole else sorted(names))
    fresh = conn.call(lambda c: c.get_object_info())
    store(key, fresh, note=conn.note)
    return plan(fresh), fresh


def _unchanged(conn: Any, kept: dict[str, Any], names: set[str]) -> bool:
    """Whether the server's definition of each class in ``names`` equals the kept one (absent for absent)."""
    if not names:
        return True
    timeout = None
    if getattr(conn, "deadline", None) is not None:  # --timeout bounds the whole run, these checks too
        left = conn.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        timeout = max(0.2, min(conn.client.timeout, left))

    def check(name: str) -> bool:
        answer = conn.client.get_object_info(name, timeout=timeout)
        return isinstance(answer, dict) and answer.get(name) == kept.get(name)

    try:
        if len(names) <= SEQUENTIAL_CHECKS:  # a kept-alive request each: cheaper than starting threads
            return all(check(name) for name in sorted(names))
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(CHECK_THREADS, len(names))) as pool:
            return all(pool.map(check, sorted(names)))
    except AutopodError as e:  # out of reach, or a name the route cannot carry: the full fetch decides
        log.debug("per-class check failed (%s); fetching the whole list", e)
        return False


# -- the kept copies ------------------------------------------------------------------------------------------


def cache_key(conn: Any) -> tuple[str, str]:
    """(target, ComfyUI's address as the target sees it): the pod id or ``host:<name>`` with
    ``comfy_address``; with ``--no-tunnel``, the configured URL."""
    ep = conn.endpoint
    if ep.target_id:
        return ep.target_id, ep.comfy_address or ""
    return "url", ep.url


def image_key(image: str) -> tuple[str, str]:
    """The key of the definitions kept for a container image (the last pod of that image autopod saw)."""
    return "image", image


def pod_image(target: str) -> str | None:
    """The image autopod created pod ``target`` with (its records; no API call), or None."""
    if not target or target in ("url", "image") or target.startswith("host:"):
        return None
    from ..runpod.registry import entries_or_warn

    spec = (entries_or_warn().get(target) or {}).get("spec") or {}
    image = spec.get("image") if isinstance(spec, dict) else None
    return image if isinstance(image, str) and image else None


def cache_path(key: tuple[str, str]) -> Path:
    from ..core.paths import autopod_home, private_dir

    folder = private_dir(autopod_home() / "cache", "the cache folder")
    folder = private_dir(folder / "object_info", "the cache folder")
    digest = hashlib.sha256("\n".join(key).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return folder / f"{digest}.json"


def load(key: tuple[str, str], *, note: Callable[[str], None]) -> dict[str, Any] | None:
    """The kept definitions for ``key``, or None (none kept, or damaged: then copied aside and said)."""
    from ..core.state import StateFile

    path = cache_path(key)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        note(f"cannot read the kept node definitions {path} ({e.strerror or e}); fetching them from ComfyUI")
        return None
    try:
        doc = json.loads(raw)
        _validate(doc, key)
    except (ValueError, TypeError) as e:
        backup = StateFile(path).set_aside()
        kept = f"; a copy is kept at {backup}" if backup else ""
        note(f"the kept node definitions {path} are damaged ({e}){kept}; fetching them from ComfyUI")
        return None
    try:
        os.utime(path)  # used: the pruning of kept copies goes by this time
    except OSError:
        pass
    return doc["object_info"]


def _validate(doc: Any, key: tuple[str, str]) -> None:
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} file")
    if [doc.get("target"), doc.get("address")] != list(key):
        raise ValueError("it belongs to another pod")
    info = doc.get("object_info")
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise ValueError("object_info is not an object of node definitions")


def store(key: tuple[str, str], object_info: dict[str, Any], *, note: Callable[[str], None]) -> None:
    """Keep ``object_info`` for ``key``: written whole (a temporary file, fsynced, renamed) under a lock.
    A cache that cannot be written is said once and the run goes on."""
    from filelock import Timeout as LockTimeout

    from ..core.state import private_lock, write_private

    try:
        path = cache_path(key)
        text = json.dumps({"version": VERSION, "target": key[0], "address": key[1], "fetched_at": time.time(),
                           "object_info": object_info}, separators=(",", ":"))
        with private_lock(str(path) + ".lock", LOCK_TIMEOUT_S):
            write_private(path, text)
        image = pod_image(key[0])
        if image is not None:  # for endpoints of the same image (see the module docstring)
            ipath = cache_path(image_key(image))
            itext = json.dumps({"version": VERSION, "target": "image", "address": image, "fetched_at": time.time(),
                                "pod": key[0], "object_info": object_info}, separators=(",", ":"))
            with private_lock(str(ipath) + ".lock", LOCK_TIMEOUT_S):
                write_private(ipath, itext)
        _prune(path.parent, keep=path)
    except (OSError, LockTimeout, AutopodError) as e:
        note(f"could not keep the node definitions for the next run ({e})")


def _prune(folder: Path, *, keep: Path) -> None:
    """Kept copies unused for PRUNE_DAYS go (pods come and go; each copy is 0.5 MB or more), with
    their locks. Damaged copies set aside stay: the user was told about them."""
    cutoff = time.time() - PRUNE_DAYS * 86400
    for entry in folder.glob("*.json"):
        try:
            if entry != keep and entry.stat().st_mtime < cutoff:
                entry.unlink()
                Path(str(entry) + ".lock").unlink(missing_ok=True)
        except OSError:
            pass
