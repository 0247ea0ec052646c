"""Warm start: the console script's quick paths run in a process forked from a resident, ready interpreter.

A fresh ``autopod comfy.run`` spends most of what it costs over a minimal script on starting Python and
importing autopod (``bench/comfy_render.py``). So the first quick-path command starts a server in the
background (one per user, Python, autopod install and locale); the server imports the modules once and,
for each later command, forks a child that takes the command's stdin, stdout and stderr (passed over a
Unix socket as file descriptors), its environment, working folder, umask and arguments, and runs the
same ``launch`` code a fresh process runs. Every run is still a process of its own with nothing carried
over from an earlier one: the ledger, locks, checks and output are what they are without the server.

The command's own process (the client) stays in between: it forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT and
stop/continue to the child's process group, and exits with the child's status, or dies of the same signal.
When the client dies (kill -9, a closed terminal), the child is killed at once, as it would have died with
it. The server's own environment holds no secrets: the command's environment reaches only the child.

``AUTOPOD_WARM=0`` turns it off; it works on Linux only (``SUPPORTED``). The server exits after
``AUTOPOD_WARM_IDLE_S`` (600) seconds without a command, and as soon as a file of the autopod it imported
changes (an upgrade): that command and the next run as fresh processes while a new server starts. Where
anything is unusual (a socket folder that is not private, a closed standard stream, a deleted working
folder) the command simply runs as a fresh process.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Callable

IDLE_S = 600.0
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 16 << 20
# What decides how a fresh interpreter starts (and so what a forked one must have started with).
_START_ENV = ("TZ", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "PYTHONHOME", "PYTHONIOENCODING",
              "PYTHONUTF8", "PYTHONWARNINGS", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX",
              "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "PYTHONOPTIMIZE", "PYTHONHASHSEED",
              "PYTHONDEVMODE", "PYTHONMALLOC", "PYTHONFAULTHANDLER", "PYTHONTRACEMALLOC", "PYTHONASYNCIODEBUG")
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGCONT")


def enabled() -> bool:
    """Not when turned off (or set to what :func:`check_setting` refuses), not inside a warm child, not for
    an interpreter run with -i, -v or -q."""
    f = sys.flags
    return (os.environ.get("AUTOPOD_WARM", "1") == "1" and not os.environ.get("AUTOPOD_WARM_CHILD")
            and not (f.inspect or f.verbose or f.quiet) and SUPPORTED)


# Linux: the peer's uid on a Unix socket (SO_PEERCRED), posix_spawn with setsid, pipe2. Elsewhere (macOS)
# every command runs as a fresh process.
SUPPORTED = all(hasattr(m, a) for m, a in ((socket, "SO_PEERCRED"), (socket, "AF_UNIX"), (os, "posix_spawn"),
                                          (os, "pipe2"), (os, "POSIX_SPAWN_DUP2")))


def check_setting() -> None:
    """``AUTOPOD_WARM`` is unset, 0 or 1; anything else is bad input (exit 2), as for every setting."""
    from .errors import BadSetting
    from .flags import env_setting

    value = env_setting("AUTOPOD_WARM")
    if value not in (None, "0", "1"):
        raise BadSetting(f"AUTOPOD_WARM must be 0 (off) or 1 (on), got {value!r}")


def _key() -> str:
    """Everything a forked interpreter shares with a fresh one: same Python, same autopod, same start-up."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags = tuple(getattr(sys.flags, f) for f in _FLAGS)
    parts = [sys.executable, sys.version, pkg, str(os.getuid()), repr(flags), repr(sorted(sys._xoptions.items())),
             *(f"{k}={os.environ.get(k, '')}" for k in _START_ENV)]
    return "\0".join(parts)


# sys.flags that change how the interpreter runs (not safe_path: the server always starts with -P, so that
# the folder it happened to start in is never on its import path).
_FLAGS = ("debug", "optimize", "dont_write_bytecode", "no_user_site", "no_site", "ignore_environment",
          "bytes_warning", "hash_randomization", "isolated", "dev_mode", "utf8_mode", "warn_default_encoding",
          "int_max_str_digits")


def _spawn_flags() -> list[str]:
    f = sys.flags
    out = ["-P"]
    out += ["-I"] if f.isolated else [x for x, on in (("-E", f.ignore_environment), ("-s", f.no_user_site)) if on]
    out += [x for x, on in (("-S", f.no_site), ("-B", f.dont_write_bytecode)) if on]
    out += ["-O"] * min(f.optimize, 2) + ["-b"] * f.bytes_warning + ["-d"] * f.debug
    for k, v in sys._xoptions.items():
        out += ["-X", k if v is True else f"{k}={v}"]
    return out


def _name(key: str) -> str:
    import zlib

    return "warm-%08x.sock" % zlib.crc32(key.encode("utf-8", "surrogateescape"))


def socket_dir() -> str | None:
    """A folder only this user can enter, or None (then nothing is warm)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(base, "autopod") if base and os.path.isabs(base) else f"/tmp/autopod-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None  # someone else's, or open to others: a stranger could answer or read the environment
    return path


# ---- the command's side -------------------------------------------------------------------------------


def run(argv: list[str]) -> int | None:
    """Run the command in a child of the warm server and return its exit status; None to run it here.

    None means nothing has run: no server (one is started for next time), a server that refused (it is out
    of date and exits), or something unusual about this process."""
    if not enabled():
        return None
    folder = socket_dir()
    if folder is None:
        return None
    key = _key()
    path = os.path.join(folder, _name(key))
    try:
        cwd = os.getcwd()
        fds = [0, 1, 2]
        for fd, stream in zip(fds, (sys.stdin, sys.stdout, sys.stderr)):
            os.fstat(fd)
            if stream is None or stream.fileno() != fd:
                return None  # the caller replaced a stream (main() called from Python): only this process has it
    except (OSError, ValueError, AttributeError):
        return None  # a deleted working folder or a closed standard stream: a fresh process says what it says
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        if not _starting(path):
            _start_server(folder, key)
        return None
    try:
        return _as_client(conn, argv, key, cwd, fds)
    finally:
        conn.close()


def _as_client(conn: socket.socket, argv: list[str], key: str, cwd: str, fds: list[int]) -> int | None:
    import json
    import signal

    try:
        peer_uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       struct.calcsize("3i")))[1]
        if peer_uid != os.getuid():
            return None
        umask = os.umask(0)
        os.umask(umask)
        request = json.dumps({"key": key, "argv": argv, "argv0": sys.argv[0], "env": dict(os.environ),
                              "cwd": cwd, "umask": umask, "pid": os.getpid()}).encode()
        conn.sendmsg([_HEADER.pack(len(request))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", *fds))])
        conn.sendall(request)
        reader = conn.makefile("rb")
        first = reader.readline().split()
    except OSError:
        return None
    if len(first) != 2 or first[0] != b"P":
        return None  # refused ("R"): the server is out of date and leaves; this command runs fresh
    child = int(first[1])
    saved = {}

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(child, signum)
        except OSError:
            pass

    def stop(_signum: int, _frame: object) -> None:  # Ctrl-Z: stop the child with us, go on with it
        forward(signal.SIGSTOP, None)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, stop)
        forward(signal.SIGCONT, None)

    for name in _FORWARDED:
        s = getattr(signal, name, None)
        if s is not None:
            saved[s] = signal.signal(s, forward)
    saved[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, stop)
    try:
        last = reader.readline().split()
    except OSError:
        last = []
    for s, h in saved.items():
        signal.signal(s, h)
    if len(last) == 2 and last[0] == b"E":
        return int(last[1])
    if len(last) == 2 and last[0] == b"S":  # the child died of a signal: so do we, as a fresh process would have
        sig = int(last[1])
        try:
            sys.stdout.flush()
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
        return 128 + sig  # a signal whose default is not to end a process
    os.write(2, b"error: autopod's warm server ended while the command ran (AUTOPOD_WARM=0 runs it without)\n")
    return 1


def _starting(path: str) -> bool:
    """A server holds its lock from before it imports until it has left: one is starting, or leaving."""
    import fcntl

    try:
        fd = os.open(path + ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _start_server(folder: str, key: str) -> None:
    """Start the server in a session of its own, with no terminal and none of this command's secrets."""
    env = {k: os.environ[k] for k in (*_START_ENV, "PATH", "HOME", "TMPDIR", "XDG_RUNTIME_DIR",
                                      "AUTOPOD_WARM_IDLE_S") if k in os.environ}
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                   (os.POSIX_SPAWN_DUP2, devnull, 2)]
        os.posix_spawn(sys.executable, [sys.executable, *_spawn_flags(), "-m", "autopod.warmstart", folder, _name(key)],
                       env, file_actions=actions, setsid=True)
    except OSError:
        pass
    finally:
        os.close(devnull)


# ---- the server ---------------------------------------------------------------------------------------


def _preload() -> None:
    """Import what the quick paths import, so that a child starts with it: autopod's modules but the
    simulator, the task collections (invoke), the tunnel daemon (it reads its settings on import) and the
    pod-side programs; then the libraries they import inside functions. Not ``runpod``: only its adapter
    imports it, lazily, and only some commands need it."""
    import importlib
    import pkgutil

    import autopod

    skip = {"autopod.sim", "autopod.tasks", "autopod.cli", "autopod.tunnels.daemon", "autopod.models.puller",
            "autopod.runpod.watchdog", "autopod.__main__", "autopod.warmstart"}
    names, todo = [], [("autopod.", list(autopod.__path__))]
    while todo:  # walked by hand: pkgutil.walk_packages would import the packages it is told to skip
        prefix, path = todo.pop()
        for info in pkgutil.iter_modules(path, prefix):
            if info.name in skip:
                continue
            names.append(info.name)
            if info.ispkg:
                todo.append((info.name + ".", [os.path.join(path[0], info.name.rsplit(".", 1)[1])]))
    for name in [*names, "json", "sqlite3", "http.client", "ssl", "uuid", "websocket", "yaml", "requests",
                 "PIL.Image", "PIL.PngImagePlugin", "tabulate", "filelock", "psutil"]:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - whatever fails here is imported (and reported) by the child itself
            pass


def _stamps() -> dict[str, tuple[int, int]]:
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and f.startswith(pkg):
            try:
                st = os.stat(f)
            except OSError:
                st = None
            out[f] = (st.st_mtime_ns, st.st_size) if st else (0, -1)
    return out


def _changed(stamps: dict[str, tuple[int, int]]) -> bool:
    for f, stamp in stamps.items():
        try:
            st = os.stat(f)
        except OSError:
            return True
        if (st.st_mtime_ns, st.st_size) != stamp:
            return True
    return False


def serve(folder: str, name: str, dispatch: Callable[[list[str]], int]) -> None:
    """Serve until idle or out of date; each command's child runs ``dispatch(argv)`` (``launch.dispatch``)."""
    import fcntl
    import selectors
    import signal
    import time
    from contextlib import suppress

    os.chdir("/")
    path = os.path.join(folder, name)
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server has started for the same key
    if _name(_key()) != name:
        return
    os.ftruncate(lock, 0)
    os.write(lock, b"%d\n" % os.getpid())  # who serves: for a user's `kill`, and the tests
    _preload()
    stamps = _stamps()
    idle_s = float(os.environ.get("AUTOPOD_WARM_IDLE_S", IDLE_S))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    ino = os.stat(path).st_ino  # the socket file of this server: if it is removed or replaced, the server leaves
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the client's, never the server's
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "child")
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    leaving = False
    try:
        while True:
            if leaving and not children:
                break
            if not children and not leaving and time.monotonic() - last > idle_s:
                break
            if not leaving and _gone(path, ino):
                leaving = True  # the socket was removed or replaced: finish the running commands, then go
            for sk, _ in sel.select(timeout=min(idle_s, 30.0)):
                if sk.data == "accept":
                    try:
                        conn, _ = listener.accept()
                    except OSError:
                        continue
                    last = time.monotonic()
                    pid = _accept(conn, stamps, listener, wake_r, wake_w, children, dispatch)
                    if pid == -1:
                        leaving = True
                        with suppress(OSError, KeyError, ValueError):
                            sel.unregister(listener)
                        with suppress(OSError, KeyError, ValueError):
                            os.unlink(path)
                    elif pid:
                        children[pid] = conn
                        sel.register(conn, selectors.EVENT_READ, pid)
                elif sk.data == "child":
                    with suppress(OSError, KeyError, ValueError):
                        while os.read(wake_r, 512):
                            pass
                    _reap(children, sel)
                    last = time.monotonic()
                else:  # the client spoke or went away: it only goes away, so the child goes with it
                    pid = sk.data
                    try:
                        data = sk.fileobj.recv(64)
                    except OSError:
                        data = b""
                    if not data:
                        with suppress(OSError, KeyError, ValueError):
                            os.killpg(pid, signal.SIGKILL)
                        with suppress(OSError, KeyError, ValueError):
                            sel.unregister(sk.fileobj)
            _reap(children, sel)
    finally:
        if not _gone(path, ino):
            with suppress(OSError, KeyError, ValueError):
                os.unlink(path)


def _gone(path: str, ino: int) -> bool:
    try:
        return os.stat(path).st_ino != ino
    except OSError:
        return True


def _reap(children: dict[int, socket.socket], sel: object) -> None:
    from contextlib import suppress

    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        with suppress(OSError, KeyError, ValueError):
            sel.unregister(conn)  # type: ignore[attr-defined]
        msg = (b"S %d\n" % os.WTERMSIG(status)) if os.WIFSIGNALED(status) \
            else (b"E %d\n" % os.waitstatus_to_exitcode(status))
        with suppress(OSError, KeyError, ValueError):
            conn.sendall(msg)
        conn.close()


def _accept(conn: socket.socket, stamps: dict, listener: socket.socket, wake_r: int, wake_w: int,
            children: dict[int, socket.socket], dispatch: Callable[[list[str]], int]) -> int:
    """Read one request and fork its child: the child's pid, 0 when the request was bad, -1 when out of date."""
    import array
    import json

    fds: list[int] = []
    try:
        conn.settimeout(5.0)  # a client that connects and says nothing does not hold the server
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        if uid != os.getuid():
            conn.close()
            return 0
        head, anc, _, _ = conn.recvmsg(_HEADER.size, socket.CMSG_SPACE(3 * 4))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(data[: len(data) - len(data) % a.itemsize])
                fds.extend(a)
        (size,) = _HEADER.unpack(head) if len(head) == _HEADER.size else (0,)
        if len(fds) != 3 or not 0 < size <= _MAX_REQUEST:
            raise ValueError("bad request")
        buf = bytearray()
        while len(buf) < size:
            chunk = conn.recv(min(1 << 20, size - len(buf)))
            if not chunk:
                raise ValueError("short request")
            buf += chunk
        req = json.loads(buf)
        if req.get("key") != _key() or _changed(stamps):
            conn.sendall(b"R out-of-date\n")
            conn.close()
            _close(fds)
            return -1
        conn.settimeout(None)
        pid = os.fork()
        if pid == 0:
            _child(conn, fds, req, [listener.fileno(), wake_r, wake_w, *(c.fileno() for c in children.values())],
                   dispatch)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # it did so itself, or has ended already
        conn.sendall(b"P %d\n" % pid)
        return pid
    except (OSError, ValueError, KeyError, TypeError):
        conn.close()
        return 0
    finally:
        _close(fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def _child(conn: socket.socket, fds: list[int], req: dict, inherited: list[int],
           dispatch: Callable[[list[str]], int]) -> None:
    """The forked command: the client's streams, environment, folder and arguments, then ``launch``."""
    import atexit
    import signal
    import threading

    code = 1
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for name in ("SIGCHLD", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGTSTP"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _close(inherited)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        _close(fds)
        os.chdir(req["cwd"])
        os.umask(int(req["umask"]))
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ["AUTOPOD_WARM_CHILD"] = str(req["pid"])
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = None  # found again from this command's TMPDIR
        sys.argv = [req["argv0"], *req["argv"]]
        sys.stdout.reconfigure(line_buffering=os.isatty(1))

        client = int(req["pid"])

        def watch() -> None:
            """The command's process is gone (kill -9): go with it. It was stopped (SIGSTOP, which it cannot
            pass on): stop too, until the SIGCONT it passes on. As a fresh process would have."""
            import select

            while True:
                try:
                    ready = select.select([conn], [], [], STOP_POLL_S)[0]
                    if ready and not conn.recv(64):
                        break
                except OSError:
                    break
                if _stopped(client):
                    os.killpg(0, signal.SIGSTOP)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
        code = dispatch(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, status 1
        import traceback

        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed pipe: the status still counts
                pass
        os._exit(code & 0xFF if isinstance(code, int) else 1)


STOP_POLL_S = 0.1


def _stopped(pid: int) -> bool:
    """Is ``pid`` stopped (state T in /proc; where there is no /proc, never)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"T"
    except (OSError, IndexError):
        return False


def client_pid() -> int:
    """The pid the user knows for this command: the client's when it runs warm, else this process's."""
    pid = os.environ.get("AUTOPOD_WARM_CHILD")
    return int(pid) if pid and pid.isdigit() else os.getpid()
