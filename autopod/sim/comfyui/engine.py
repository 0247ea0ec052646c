"""The prompt queue, its one worker thread, caching and history, as ComfyUI 0.3.64 runs them.

One engine per stand-in; nothing is global. The worker takes the lowest ``number`` first
(``front`` gives negative numbers), runs the nodes in ComfyUI's order (an ExecutionList
staging output nodes as early as possible) and reports every step with ComfyUI's events:
``execution_start``, ``execution_cached``, per node ``progress_state`` / ``executing`` /
``progress`` / ``executed``, then ``execution_success`` or ``execution_error`` /
``execution_interrupted``, ``status`` and ``executing {node: null}``. Events of a prompt go
to its ``client_id`` only; without one, only ``status``, ``progress_state`` and ``progress``
are sent (to everyone), as ComfyUI does.

Caching is ComfyUI's classic cache: a node's key is its class, its widget values and the
keys of what feeds it (plus a file hash for LoadImage); only the last prompt's keys are
kept, so re-running a prompt reuses everything and the output node re-sends its old ``ui``.

Interrupts take effect at the next node boundary or progress step (``AutopodSleep``).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import threading
import time
import traceback
import uuid
from typing import Any, Callable

from .folders import Folders
from .nodes import Interrupted, NodeDef, RunContext, not_executable
from .validation import full_type_name, is_link, validate_prompt

log = logging.getLogger(__name__)

SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MAXIMUM_HISTORY_SIZE = 10000
NO_PROMPT = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}

Send = Callable[[str, Any, "str | None"], None]


def now_ms() -> int:
    return int(time.time() * 1000)


def format_value(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


class ExecutionList:
    """ComfyUI's ExecutionList: nodes an output needs, minus cached ones, staged when their inputs are done."""

    def __init__(self, prompt: dict, is_output: Callable[[str], bool], is_cached: Callable[[str], bool]):
        self.prompt = prompt
        self.is_output = is_output
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict]] = {}
        self.staged: str | None = None

    def add_node(self, unique_id: str) -> None:
        node_ids = [unique_id]
        links = []
        while node_ids:
            uid = node_ids.pop()
            if uid in self.pending:
                continue
            self.pending[uid] = True
            self.block_count[uid] = 0
            self.blocking[uid] = {}
            for value in (self.prompt[uid].get("inputs") or {}).values():
                if is_link(value):
                    src, socket = value
                    if not self.is_cached(src):
                        node_ids.append(src)
                    links.append((src, socket, uid))
        for src, socket, to in links:
            if not self.is_cached(src):
                self.add_node(src)
                if to not in self.blocking[src]:
                    self.blocking[src][to] = {}
                    self.block_count[to] += 1
                self.blocking[src][to][socket] = True

    def is_empty(self) -> bool:
        return not self.pending

    def stage(self) -> str | None:
        """The next node to run, or None for a dependency cycle."""
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        self.staged = self._pick(ready)
        return self.staged

    def _pick(self, ready: list[str]) -> str:
        for n in ready:
            if self.is_output(n):
                return n
        for n in ready:
            if any(self.is_output(b) for b in self.blocking[n]):
                return n
        for n in ready:
            if any(self.is_output(b1) for b in self.blocking[n] for b1 in self.blocking.get(b, {})):
                return n
        return ready[0]

    def complete(self) -> None:
        node_id = self.staged
        assert node_id is not None
        del self.pending[node_id]
        for blocked in self.blocking[node_id]:
            self.block_count[blocked] -= 1
        del self.blocking[node_id]
        self.staged = None


class Engine:
    def __init__(self, *, folders: Folders, node_info: Callable[[str], "dict | None"], nodes: dict[str, NodeDef],
                 send: Send):
        self.folders = folders
        self.node_info = node_info
        self.nodes = nodes
        self._send = send
        self.taps: list[Send] = []  # also hear every event (a worker-comfyui handler follows its prompt so)
        self.disable_metadata = False  # ComfyUI's --disable-metadata: save nodes get no prompt or workflow
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._emit_lock = threading.RLock()  # one ordered stream of events, whichever thread sends
        self._heap: list[tuple] = []
        self._seq = 0
        self._running: dict[int, tuple] = {}
        self._resume: list[tuple[int, tuple]] = []  # items running when the stand-in started (busy replay)
        self._task_counter = 0
        self._hold: set[str] = set()  # prompt ids that wait for an interrupt before their first node
        self.history: dict[str, Any] = {}
        self.counter = 0
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self._interrupt = threading.Event()
        self._stop = threading.Event()
        self._flags: dict[str, Any] = {}
        self._cache: dict[str, tuple[tuple, dict | None]] = {}
        self._objects: dict[str, tuple[str, dict]] = {}
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._interrupt.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def restore(self, running: list, pending: list, history: dict) -> None:
        """Start from a recorded state: ``running`` items wait for an interrupt, then ``pending`` ones run."""
        with self._lock:
            for item in running:
                full = tuple(item[:5]) + ({},)
                self._running[self._task_counter] = full
                self._resume.append((self._task_counter, full))
                self._hold.add(full[1])
                self._task_counter += 1
            self.set_pending(pending)
            self.history = history
            numbers = [i[0] for i in list(running) + list(pending)] + [h["prompt"][0] for h in history.values()]
            self.counter = int(max(numbers, default=-1)) + 1

    # -- the queue -------------------------------------------------------------------------------

    def running_items(self) -> list:
        with self._lock:
            return [list(i[:5]) for i in self._running.values()]

    def pending_items(self) -> list:
        with self._lock:
            return [list(e[3][:5]) for e in self._heap]  # heap order, like ComfyUI's heap copy

    def set_pending(self, items: list) -> None:
        with self._cv:
            self._heap = []
            for item in items:
                self._seq += 1
                full = tuple(item[:5]) + (tuple(item[5:6]) or ({},))
                self._heap.append((full[0], full[1], self._seq, full))
            heapq.heapify(self._heap)
            self._cv.notify_all()

    def remaining(self) -> int:
        with self._lock:
            return len(self._heap) + len(self._running)

    def _emit(self, event: str, data: Any, sid: str | None) -> None:
        with self._emit_lock:
            self._send(event, data, sid)
            for tap in self.taps:
                tap(event, data, sid)

    def queue_updated(self) -> None:
        with self._emit_lock:
            self._send("status", {"status": {"exec_info": {"queue_remaining": self.remaining()}}}, None)

    def greeting(self, sid: str) -> list[tuple[str, Any]]:
        """What a new WebSocket hears first; a client reconnecting mid-run also learns the current node."""
        msgs: list[tuple[str, Any]] = [("status", {"status": {"exec_info": {"queue_remaining": self.remaining()}},
                                                   "sid": sid})]
        with self._lock:
            if self.client_id == sid and self.last_node_id is not None:
                msgs.append(("executing", {"node": self.last_node_id}))
        return msgs

    def submit(self, body: dict) -> tuple[int, dict]:
        """POST /prompt. Raises for bodies ComfyUI answers with a 500 (the caller does that)."""
        with self._lock:
            if "number" in body:
                number: Any = float(body["number"])
            else:
                number = self.counter
                if "front" in body and body["front"]:
                    number = -number
                self.counter += 1
        if "prompt" not in body:
            return 400, {"error": dict(NO_PROMPT), "node_errors": {}}
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        ok, error, outputs, node_errors = validate_prompt(prompt, self.node_info, self._custom_check,
                                                          body.get("partial_execution_targets"))
        extra = body["extra_data"] if "extra_data" in body else {}
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        if not ok:
            return 400, {"error": error, "node_errors": node_errors}
        sensitive = {k: extra.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra}
        item = (number, prompt_id, prompt, extra, outputs, sensitive)
        with self._emit_lock:  # this status goes out before the worker can announce the prompt's start
            with self._cv:
                self._seq += 1
                heapq.heappush(self._heap, (number, prompt_id, self._seq, item))
                self._cv.notify_all()
            self.queue_updated()
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}

    def _custom_check(self, class_type: str):
        d = self.nodes.get(class_type)
        if d is None or d.validate is None:
            return None
        return d.validate_args, lambda **kw: d.validate(self.folders, **kw)

    def delete_pending(self, prompt_id: str) -> None:
        with self._cv:
            for i, entry in enumerate(self._heap):
                if entry[1] == prompt_id:
                    self._heap.pop(i)
                    heapq.heapify(self._heap)
                    break
            else:
                return
        self.queue_updated()

    def clear_pending(self) -> None:
        with self._cv:
            self._heap = []
        self.queue_updated()

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Global, or only if ``prompt_id`` is running (otherwise ignored, as in ComfyUI)."""
        if prompt_id:
            with self._lock:
                if not any(item[1] == prompt_id for item in self._running.values()):
                    return
        self._interrupt.set()

    def free(self, body: dict) -> None:
        with self._cv:
            self._flags.update({k: body[k] for k in ("unload_models", "free_memory") if k in body})
            self._cv.notify_all()

    def _check_interrupt(self) -> None:
        if self._stop.is_set():
            raise Interrupted()
        if self._interrupt.is_set():
            self._interrupt.clear()
            raise Interrupted()

    # -- history ---------------------------------------------------------------------------------

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1) -> dict:
        with self._lock:
            if prompt_id is not None:
                return {prompt_id: json.loads(json.dumps(self.history[prompt_id]))} if prompt_id in self.history \
                    else {}
            out = {}
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            for i, (k, v) in enumerate(self.history.items()):
                if i >= offset:
                    out[k] = v
                    if max_items is not None and len(out) >= max_items:
                        break
            return json.loads(json.dumps(out))

    def delete_history(self, prompt_id: str) -> None:
        with self._lock:
            self.history.pop(prompt_id, None)

    def clear_history(self) -> None:
        with self._lock:
            self.history = {}

    # -- the worker ------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._resume and not self._flags and not self._stop.is_set():
                    self._cv.wait()
                if self._stop.is_set():
                    return
                if self._resume:
                    task, item = self._resume.pop(0)
                elif self._heap:
                    item = heapq.heappop(self._heap)[3]
                    task = self._task_counter
                    self._task_counter += 1
                    self._running[task] = item
                else:
                    self._apply_flags()
                    continue
                # ComfyUI resets the interrupt flag as a prompt starts; doing it as the prompt becomes visible
                # as running means an interrupt aimed at it, once GET /queue shows it running, always lands.
                self._interrupt.clear()
            self.queue_updated()
            try:
                success, messages, result = _Run(self, item).go()
            except Exception:  # a bug of the stand-in must not kill the queue
                log.exception("the ComfyUI stand-in failed to run prompt %s", item[1])
                success, messages, result = False, [], {"outputs": {}, "meta": {}}
            client_id = item[3].get("client_id")
            with self._lock:
                self._running.pop(task, None)
                self._hold.discard(item[1])
                if len(self.history) > MAXIMUM_HISTORY_SIZE:
                    self.history.pop(next(iter(self.history)))
                self.history[item[1]] = {
                    "prompt": list(item[:5]), "outputs": {},
                    "status": {"status_str": "success" if success else "error", "completed": success,
                               "messages": json.loads(json.dumps(messages))}, **result}
            self.queue_updated()
            if client_id is not None:
                self._emit("executing", {"node": None, "prompt_id": item[1]}, client_id)
            with self._lock:
                self._apply_flags()

    def _apply_flags(self) -> None:
        if self._flags.pop("free_memory", False):
            self._cache.clear()
            self._objects.clear()
        self._flags.clear()

    def _wait_for_interrupt(self) -> None:
        while not self._interrupt.wait(0.5):
            if self._stop.is_set():
                return

    def signatures(self, prompt: dict) -> dict[str, str]:
        """Cache keys: class, IS_CHANGED, widget values and, recursively, the keys of linked inputs."""
        memo: dict[str, str] = {}
        busy: set[str] = set()

        def sig(nid: str) -> str:
            if nid in memo:
                return memo[nid]
            if nid in busy or nid not in prompt:  # a cycle or a dangling link: nothing to share
                return f"loop:{nid}"
            busy.add(nid)
            node = prompt[nid]
            class_type = node.get("class_type")
            d = self.nodes.get(class_type)
            inputs = node.get("inputs") or {}
            changed = d.is_changed(self.folders, inputs) if d is not None and d.is_changed else None
            parts: list[Any] = [class_type, changed]
            for key in sorted(inputs):
                value = inputs[key]
                parts.append([key, "LINK", sig(value[0]), value[1]] if is_link(value) else [key, value])
            busy.discard(nid)
            memo[nid] = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
            return memo[nid]

        return {nid: sig(nid) for nid in prompt}


class _Run:
    """One prompt's execution."""

    def __init__(self, engine: Engine, item: tuple):
        self.e = engine
        self.number, self.prompt_id, self.prompt, extra, self.outputs_to_execute, sensitive = item
        self.extra = {**extra, **sensitive}
        self.client_id = extra.get("client_id")
        self.messages: list = []
        self.progress: dict[str, dict] = {}
        self.executed: list[str] = []
        self.ui: dict[str, dict] = {}
        self.sigs: dict[str, str] = {}
        self._outputs: dict[str, bool] = {}

    # -- events ----------------------------------------------------------------------------------

    def message(self, event: str, data: dict, broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.e._emit(event, data, self.client_id)

    def to_client(self, event: str, data: dict) -> None:
        if self.client_id is not None:
            self.e._emit(event, data, self.client_id)

    def _progress(self, node_id: str, state: str, value: Any = None, max_: Any = None) -> None:
        entry = self.progress.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})
        entry["state"] = state
        if state == "finished":
            entry["value"] = entry["max"]
        else:
            entry["value"], entry["max"] = value, max_
        nodes = {nid: {"value": s["value"], "max": s["max"], "state": s["state"], "node_id": nid,
                       "prompt_id": self.prompt_id, "display_node_id": nid, "parent_node_id": None,
                       "real_node_id": nid}
                 for nid, s in self.progress.items() if s["state"] != "pending"}
        # progress_state goes to the prompt's client, or to everyone when it has none
        self.e._emit("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.client_id)

    @staticmethod
    def meta(node_id: str) -> dict:
        return {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}

    # -- running ---------------------------------------------------------------------------------

    def go(self) -> tuple[bool, list, dict]:
        e = self.e
        with e._lock:
            e.client_id = self.client_id
            e.last_prompt_id = self.prompt_id
        self.message("execution_start", {"prompt_id": self.prompt_id}, False)
        if self.prompt_id in e._hold:
            e._wait_for_interrupt()
        self.sigs = e.signatures(self.prompt)
        keep = set(self.sigs.values())
        for key in [k for k in e._cache if k not in keep]:  # the classic cache keeps the last prompt only
            del e._cache[key]
        cached = [nid for nid in self.prompt if self.sigs[nid] in e._cache]
        self.message("execution_cached", {"nodes": cached, "prompt_id": self.prompt_id}, False)
        elist = ExecutionList(self.prompt, self.is_output, lambda nid: self.sigs.get(nid) in e._cache)
        for node_id in self.outputs_to_execute:
            elist.add_node(node_id)
        success = True
        while not elist.is_empty():
            node_id = elist.stage()
            if node_id is None:
                blamed = next(iter(elist.pending))
                self.message("execution_error", {
                    "prompt_id": self.prompt_id, "node_id": blamed,
                    "node_type": self.prompt[blamed]["class_type"], "executed": list(self.executed),
                    "exception_message": "Dependency cycle detected", "exception_type": "graph.DependencyCycleError",
                    "traceback": [], "current_inputs": [], "current_outputs": list(self.prompt)}, False)
                success = False
                break
            if not self.execute_node(node_id):
                success = False
                break
            elist.complete()
        if success:
            self.message("execution_success", {"prompt_id": self.prompt_id}, False)
        with e._lock:
            e.last_node_id = None
        result = {"outputs": {nid: u["output"] for nid, u in self.ui.items()},
                  "meta": {nid: u["meta"] for nid, u in self.ui.items()}}
        return success, self.messages, json.loads(json.dumps(result))

    def is_output(self, node_id: str) -> bool:
        if node_id not in self._outputs:
            info = self.e.node_info(self.prompt[node_id]["class_type"]) or {}
            self._outputs[node_id] = info.get("output_node") is True
        return self._outputs[node_id]

    def gather_inputs(self, node_id: str, info: dict) -> dict:
        declared = info.get("input") or {}
        known = set(declared.get("required") or {}) | set(declared.get("optional") or {})
        data: dict[str, Any] = {}
        for name, value in (self.prompt[node_id].get("inputs") or {}).items():
            if is_link(value):
                outputs, _ = self.e._cache[self.sigs[value[0]]]
                data[name] = outputs[int(value[1])]
            elif name in known:
                data[name] = value
        for name, kind in (declared.get("hidden") or {}).items():
            kind = kind[0] if isinstance(kind, list) else kind
            if kind == "PROMPT":
                data[name] = None if self.e.disable_metadata else self.prompt
            elif kind == "EXTRA_PNGINFO":
                data[name] = None if self.e.disable_metadata else self.extra.get("extra_pnginfo")
            elif kind == "UNIQUE_ID":
                data[name] = node_id
        return data

    def execute_node(self, node_id: str) -> bool:
        e = self.e
        class_type = self.prompt[node_id]["class_type"]
        sig = self.sigs[node_id]
        if sig in e._cache:
            ui_entry = e._cache[sig][1]
            self.to_client("executed", {"node": node_id, "display_node": node_id,
                                        "output": ui_entry["output"] if ui_entry else None,
                                        "prompt_id": self.prompt_id})
            if ui_entry:
                self.ui[node_id] = {"meta": self.meta(node_id), "output": ui_entry["output"]}
            self._progress(node_id, "finished")
            return True
        info = e.node_info(class_type) or {}
        definition = e.nodes.get(class_type)
        run = definition.run if definition is not None else not_executable(class_type)
        inputs: dict | None = None
        try:
            self._progress(node_id, "running", 0.0, 1.0)
            inputs = self.gather_inputs(node_id, info)
            if self.client_id is not None:
                with e._lock:
                    e.last_node_id = node_id
                self.to_client("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id})
            e._check_interrupt()  # ComfyUI checks before calling the node's function
            with e._lock:
                obj = e._objects.get(node_id)
                if obj is None or obj[0] != class_type:
                    obj = e._objects[node_id] = (class_type, {})
            ctx = RunContext(folders=e.folders, node_id=node_id, state=obj[1],
                             progress=lambda value, total: self.step(node_id, value, total),
                             wait=self.wait, check_interrupt=e._check_interrupt)
            outputs, ui = run(ctx, **inputs)
            ui_entry = None
            if ui:
                ui_entry = {"meta": self.meta(node_id), "output": json.loads(json.dumps(ui))}
                self.ui[node_id] = ui_entry
                self.to_client("executed", {"node": node_id, "display_node": node_id, "output": ui_entry["output"],
                                            "prompt_id": self.prompt_id})
            e._cache[sig] = (tuple(outputs), ui_entry)
        except Interrupted:
            self.message("execution_interrupted", {"prompt_id": self.prompt_id, "node_id": node_id,
                                                   "node_type": class_type, "executed": list(self.executed)}, True)
            return False
        except Exception as ex:
            current = {name: [format_value(v)] for name, v in (inputs or {}).items()}
            self.message("execution_error", {
                "prompt_id": self.prompt_id, "node_id": node_id, "node_type": class_type,
                "executed": list(self.executed), "exception_message": f"{ex}\n",
                "exception_type": full_type_name(type(ex)), "traceback": traceback.format_tb(ex.__traceback__),
                "current_inputs": current, "current_outputs": list(self.prompt)}, False)
            return False
        self._progress(node_id, "finished")
        self.executed.append(node_id)
        return True

    def step(self, node_id: str, value: int, total: int) -> None:
        """ComfyUI's progress hook: interrupt check, progress_state, then the legacy ``progress`` event."""
        self.e._check_interrupt()
        self._progress(node_id, "running", value, total)
        self.e._emit("progress", {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node_id},
                     self.client_id)

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self.e._interrupt.wait(seconds)
