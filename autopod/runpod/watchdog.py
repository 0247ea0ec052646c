"""The idle watchdog that runs inside a pod and stops it when ComfyUI has been idle too long.

``autopod pod.guard`` copies this file into the pod over SSH and starts it detached, so it keeps
working while the user's laptop is closed. It must run on the pod's own Python 3 with nothing but
the standard library, so it imports nothing from autopod (``tests/test_architecture.py`` checks).

It stops the pod with the pod's own ``runpodctl``, which RunPod installs in every pod with a
pod-scoped key, and ``RUNPOD_POD_ID``. Both live in PID 1's environment (``/etc/rp_environment``
and ``/proc/1/environ``), not in an SSH session's, so they are read from there.

Activity, any of which restarts the idle clock:
- a prompt running or pending in ComfyUI's queue (``/queue``);
- a prompt that finished since the last look (``/history?max_items=1``, its last message's time);
- an established connection to ComfyUI's port (the editor through a tunnel, a client);
- a model download of ``autopod model.pull`` running in this pod (its job's heartbeat);
- ComfyUI not answering, for up to ``dead_s``: a restart is not idleness. After that it counts
  as dead, and a dead ComfyUI on a billing pod is stopped too.

Usage (``DIR`` holds ``config.json``, ``state.json``, ``guard.log`` and this file):
    python3 watchdog.py install DIR CONFIG_JSON   # start it, or keep the one running (prints JSON)
    python3 watchdog.py run DIR                   # the loop itself (started detached by install)
    python3 watchdog.py status DIR                # what it is doing (prints JSON)
    python3 watchdog.py remove DIR                # stop it (prints JSON)
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

VERSION = 1
LOCK, PID, CONFIG, STATE, LOG, PROGRAM = "run.lock", "pid", "config.json", "state.json", "guard.log", "watchdog.py"
LOG_MAX = 256 * 1024
RUNPODCTL = {  # the older and the newer runpodctl syntax
    "stop": (["stop", "pod"], ["pod", "stop"]),
    "terminate": (["remove", "pod"], ["pod", "delete"]),
}


def now():
    return time.time()


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None


def write_json(path, doc):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def log(d, msg):
    path = os.path.join(d, LOG)
    try:
        if os.path.getsize(path) > LOG_MAX:
            os.replace(path, path + ".1")
    except OSError:
        pass
    with open(path, "a") as f:
        f.write("%s %s\n" % (iso(now()), msg))


# --- the pod's facts ----------------------------------------------------------------------


def pid1_environment():
    """RUNPOD_* variables of the container's PID 1: RunPod injects them there only."""
    env = {}
    try:
        with open("/etc/rp_environment") as f:
            for line in f:
                line = line.strip()
                if line.startswith("export "):
                    line = line[len("export "):]
                key, sep, value = line.partition("=")
                if sep and key.startswith("RUNPOD_"):
                    env[key] = value.strip().strip("'\"")
    except OSError:
        pass
    try:
        with open("/proc/1/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep and key.startswith("RUNPOD_"):
                    env.setdefault(key, value)
    except OSError:
        pass
    return env


def action_env():
    """The session's environment plus PID 1's RUNPOD_* variables (the pod-scoped key among them)."""
    env = dict(os.environ)
    for key, value in pid1_environment().items():
        env.setdefault(key, value)
    return env


def pod_id(config):
    return os.environ.get("RUNPOD_POD_ID") or pid1_environment().get("RUNPOD_POD_ID") or config["pod_id"]


def established(port):
    """Established TCP connections whose local end is ``port`` (clients of ComfyUI), or None
    where /proc/net is not readable."""
    count, seen = 0, False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "01" and int(parts[1].rpartition(":")[2], 16) == port:
                count += 1
    return count if seen else None


def comfy_get(address, path, timeout):
    with urllib.request.urlopen("http://%s%s" % (address, path), timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


def last_finished(history):
    """The newest message time (seconds) of the newest history entry, or None."""
    newest = None
    for entry in (history or {}).values():
        for msg in ((entry or {}).get("status") or {}).get("messages") or []:
            try:
                ts = float(msg[1]["timestamp"]) / 1000.0
            except (IndexError, KeyError, TypeError, ValueError):
                continue
            newest = ts if newest is None else max(newest, ts)
    return newest


# --- one look -----------------------------------------------------------------------------


PULL_ACTIVE = ("starting", "downloading", "verifying")
PULL_FRESH_S = 15.0  # a pull writes its heartbeat every second; older than this, it is not running


def pulls_running(config, d, t):
    """Model downloads (``autopod model.pull``) running in this pod: each job file of the pod-side puller
    (``<volume>/.autopod/models/jobs/*/job.json``, beside this watchdog's ``<volume>/.autopod/guard``)
    that names this pod, is active and has a fresh heartbeat. A download is work the user asked for."""
    dirs = [os.environ.get("AUTOPOD_MODELS_DIR"), os.path.expanduser("~/.autopod/models")]
    if d:
        dirs.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(d))), "models"))
    me, count, seen = pod_id(config), 0, set()
    for base in dirs:
        if not base or not os.path.isdir(os.path.join(base, "jobs")):
            continue
        base = os.path.realpath(base)
        if base in seen:
            continue
        seen.add(base)
        for name in os.listdir(os.path.join(base, "jobs")):
            try:
                with open(os.path.join(base, "jobs", name, "job.json")) as f:
                    job = json.load(f)
            except (OSError, ValueError):
                continue
            if not isinstance(job, dict):
                continue
            beat = job.get("heartbeat") or job.get("queued_at") or 0
            if (job.get("pod") == me and job.get("status") in PULL_ACTIVE
                    and isinstance(beat, (int, float)) and t - beat < PULL_FRESH_S):
                count += 1
    return count


def check(config, state, t, d=None):
    """Update ``state`` from one look at ComfyUI at time ``t``; returns the reason to act, or None.
    ``d``: the watchdog's folder, beside which model downloads keep their jobs."""
    address = config["comfy_address"]
    port = int(address.rpartition(":")[2])
    conns = established(port)  # before our own requests, which would count
    busy = []
    pulls = pulls_running(config, d, t)
    if pulls:
        busy.append("%d model download(s)" % pulls)
    try:
        queue = comfy_get(address, "/queue", config["http_timeout_s"])
        history = comfy_get(address, "/history?max_items=1", config["http_timeout_s"])
    except Exception as e:  # noqa: BLE001 (any failure to answer is the same fact: ComfyUI is not answering)
        state["comfy"] = "down"
        state["comfy_error"] = ("%s: %s" % (type(e).__name__, e))[:300]
        state.setdefault("down_since", t)
        state["last_activity"] = t  # a ComfyUI that stops answering is not idle
        down_for = t - state["down_since"]
        state["busy"] = ["ComfyUI is not answering (%ds)" % down_for]
        state["acts_in_s"] = max(0.0, config["dead_s"] - down_for)
        if down_for >= config["dead_s"]:
            return "ComfyUI at %s has not answered for %s (%s)" % (address, minutes(down_for), state["comfy_error"])
        return None
    state["comfy"] = "up"
    state.pop("down_since", None)
    state.pop("comfy_error", None)
    state["last_answer"] = t
    running, pending = len(queue.get("queue_running") or []), len(queue.get("queue_pending") or [])
    if running:
        busy.append("a prompt is running")
    if pending:
        busy.append("%d prompt(s) pending" % pending)
    if conns:
        busy.append("%d connection(s) to ComfyUI" % conns)
    finished = last_finished(history)
    if finished is not None and finished > state.get("last_finished", 0):
        state["last_finished"] = finished
        state["last_activity"] = max(state.get("last_activity", 0), min(finished, t))
    if busy:
        state["last_activity"] = t
    state["busy"] = busy
    state["connections"] = conns
    idle_for = t - state["last_activity"]
    state["idle_for_s"] = round(idle_for, 1)
    state["acts_in_s"] = 0.0 if busy else max(0.0, config["idle_s"] - idle_for)
    if not busy and idle_for >= config["idle_s"]:
        return ("no prompt ran, the queue was empty and nothing was connected to ComfyUI for %s"
                % minutes(idle_for))
    return None


def minutes(seconds):
    if seconds < 120:
        return "%d s" % round(seconds)
    return "%.1f min" % (seconds / 60.0) if seconds < 600 else "%d min" % round(seconds / 60.0)


def act(d, config, state, why):
    """Write why, then stop (or terminate) this pod with runpodctl. Returns True once it was sent."""
    action, pid = config["action"], pod_id(config)
    state["acting"] = {"at": now(), "action": action, "why": why, "pod": pid}
    write_json(os.path.join(d, STATE), state)
    log(d, "%s pod %s: %s" % ("stopping" if action == "stop" else "terminating", pid, why))
    env, errors = action_env(), []
    for words in RUNPODCTL[action]:
        try:
            done = subprocess.run(["runpodctl"] + words + [pid], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append("runpodctl %s: %s" % (" ".join(words), e))
            continue
        out = done.stdout.decode("utf-8", "replace").strip()[-300:]
        if done.returncode < 0:
            return True  # killed: the pod is going down around us, which is what was asked for
        if done.returncode == 0:
            state["acted"] = {"at": now(), "action": action, "why": why, "pod": pid, "runpodctl": out,
                              "confirmed": True}
            state.pop("acting", None)
            write_json(os.path.join(d, STATE), state)
            log(d, "runpodctl %s %s: %s" % (" ".join(words), pid, out or "ok"))
            return True
        errors.append("runpodctl %s exited %d: %s" % (" ".join(words), done.returncode, out))
    state["action_error"] = "; ".join(errors)[-600:]
    log(d, "could not %s pod %s: %s" % (action, pid, state["action_error"]))
    return False


# --- processes ----------------------------------------------------------------------------


def lock_probe(d):
    """True when a watchdog holds DIR's lock, False when none does, None where locks do not work."""
    import fcntl

    try:
        fd = os.open(os.path.join(d, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return True if e.errno in (errno.EACCES, errno.EAGAIN) else None
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def recorded_pid(d):
    try:
        with open(os.path.join(d, PID)) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid  # no /proc: trust a live pid
    joined = b" ".join(argv)
    return pid if PROGRAM.encode() in joined and os.path.abspath(d).encode() in joined else None


def running_pid(d):
    held = lock_probe(d)
    pid = recorded_pid(d)
    if held is False:
        return None
    return pid if pid is not None else (-1 if held else None)


def program_hash(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def stop_running(d, timeout=10.0):
    pid = running_pid(d)
    if pid is None or pid < 0:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = now() + timeout
    while now() < deadline and running_pid(d) is not None:
        time.sleep(0.05)
    if running_pid(d) is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return True


# --- commands -----------------------------------------------------------------------------


def cmd_install(d, raw_config):
    """Keep the running watchdog when it runs this program with this configuration; otherwise
    replace it. This file is the program just copied in; installs run one at a time."""
    import fcntl

    fd = os.open(os.path.join(d, "install.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
    except OSError:
        pass  # no locks on this file system: installs from several machines at once may race
    try:
        return _install_locked(d, json.loads(raw_config), os.path.abspath(__file__))
    finally:
        os.close(fd)


def _install_locked(d, config, new):
    current = os.path.join(d, PROGRAM)
    for name in os.listdir(d):  # copies left by installs cut short
        path = os.path.join(d, name)
        if name.startswith(PROGRAM + ".new.") and path != new and now() - os.path.getmtime(path) > 600:
            os.remove(path)
    same_program = os.path.exists(new) and program_hash(new) == program_hash(current)
    old = read_json(os.path.join(d, CONFIG), {}) or {}
    same_config = {k: v for k, v in old.items() if k != "installed_at"} == \
        {k: v for k, v in config.items() if k != "installed_at"}
    if running_pid(d) is not None and same_program and same_config:
        if os.path.exists(new):
            os.remove(new)
        return {"result": "ok", **status_doc(d)}
    replaced = stop_running(d)
    if os.path.exists(new):
        os.replace(new, current)
    write_json(os.path.join(d, CONFIG), config)
    state = read_json(os.path.join(d, STATE), {}) or {}
    if state.get("acting"):  # the pod stopped while runpodctl was still waiting for its answer
        state["acted"] = dict(state.pop("acting"), confirmed=False)
    for key in ("action_error", "down_since", "busy", "acts_in_s", "idle_for_s", "last_check"):
        state.pop(key, None)
    state["started"] = None
    write_json(os.path.join(d, STATE), state)
    with open(os.devnull, "rb") as devnull, open(os.path.join(d, "watchdog.out"), "ab") as out:
        subprocess.Popen([sys.executable, current, "run", os.path.abspath(d)], stdin=devnull, stdout=out,
                         stderr=subprocess.STDOUT, close_fds=True, start_new_session=True, cwd="/")
    deadline = now() + 15
    while now() < deadline:
        if (read_json(os.path.join(d, STATE), {}) or {}).get("last_check"):
            break
        time.sleep(0.05)
    log(d, "%s: idle %s, then %s" % ("replaced" if replaced else "installed", minutes(config["idle_s"]),
                                     config["action"]))
    return {"result": "changed", "replaced": replaced, **status_doc(d)}


def cmd_run(d):
    import fcntl

    fd = os.open(os.path.join(d, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    deadline = now() + 10
    while True:  # one watchdog per pod: a replaced one may still be on its way out
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                break  # locks do not work on this file system: the pid file has to do
            if now() > deadline:
                log(d, "another watchdog runs here; exiting")
                return 3
            time.sleep(0.1)
    config = read_json(os.path.join(d, CONFIG))
    if not config:
        log(d, "no configuration; exiting")
        return 2
    with open(os.path.join(d, PID), "w") as f:
        f.write("%d\n" % os.getpid())
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    state = read_json(os.path.join(d, STATE), {}) or {}
    t = now()
    state.update({"pid": os.getpid(), "started": t, "last_activity": t, "version": VERSION})
    retry_at = 0.0
    while not stopping:
        t = now()
        why = check(config, state, t, d)
        state["last_check"] = t
        if why and t >= retry_at:
            if not act(d, config, state, why):
                retry_at = t + max(30.0, config["poll_s"])
        write_json(os.path.join(d, STATE), state)
        end = now() + config["poll_s"]
        while not stopping and now() < end:
            time.sleep(min(0.2, config["poll_s"]))
    state["stopped"] = now()
    write_json(os.path.join(d, STATE), state)
    log(d, "ended (SIGTERM: removed, or the pod is stopping)")
    return 0


def status_doc(d):
    config = read_json(os.path.join(d, CONFIG), {}) or {}
    state = read_json(os.path.join(d, STATE), {}) or {}
    pid = running_pid(d)
    t = now()
    doc = {
        "dir": os.path.abspath(d),
        "running": pid is not None,
        "removed": not config and os.path.exists(os.path.join(d, STATE)),
        "pid": pid if pid and pid > 0 else None,
        "pod_id": config.get("pod_id"),
        "idle_minutes": round(config["idle_s"] / 60.0, 4) if "idle_s" in config else None,
        "dead_minutes": round(config["dead_s"] / 60.0, 4) if "dead_s" in config else None,
        "action": config.get("action"),
        "comfy_address": config.get("comfy_address"),
        "installed_at": iso(config.get("installed_at")),
        "last_check": iso(state.get("last_check")),
        "last_check_age_s": round(t - state["last_check"], 1) if state.get("last_check") else None,
        "comfy": state.get("comfy"),
        "busy": state.get("busy") or [],
        "idle_for_s": state.get("idle_for_s"),
        "acts_in_s": None,
        "acted": None,
        "action_error": state.get("action_error"),
        "now": iso(t),
    }
    if pid is not None and state.get("acts_in_s") is not None and state.get("last_check"):
        doc["acts_in_s"] = round(max(0.0, state["acts_in_s"] - (t - state["last_check"])), 1)
    last = state.get("acting") or state.get("acted")
    if last:
        # Not confirmed: the pod stopped before runpodctl's answer came back, as stopping it ends everything in it.
        doc["acted"] = {"at": iso(last.get("at")), "action": last.get("action"), "why": last.get("why"),
                        "confirmed": bool(last.get("confirmed"))}
    try:
        with open(os.path.join(d, LOG)) as f:
            doc["log_tail"] = [line.rstrip("\n") for line in f.readlines()[-5:]]
    except OSError:
        doc["log_tail"] = []
    return doc


def cmd_remove(d):
    stopped = stop_running(d)
    cfg = os.path.join(d, CONFIG)
    if os.path.exists(cfg):
        os.remove(cfg)
    return {"result": "changed" if stopped else "ok", **status_doc(d)}


def main(argv):
    if len(argv) < 3 or argv[1] not in ("install", "run", "status", "remove"):
        sys.stderr.write(__doc__)
        return 2
    d = argv[2]
    os.makedirs(d, mode=0o700, exist_ok=True)
    if argv[1] == "run":
        return cmd_run(d)
    if argv[1] == "install":
        doc = cmd_install(d, argv[3])
    elif argv[1] == "remove":
        doc = cmd_remove(d)
    else:
        doc = status_doc(d)
    sys.stdout.write(json.dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
