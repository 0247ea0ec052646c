"""State files: atomic, locked read-modify-write across processes; corrupt files are never overwritten."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from autopod.core.errors import ConfigError, ExitCode
from autopod.core.state import StateFile


def _writer(path: str, worker: int, n: int) -> None:
    sf = StateFile(path)
    for i in range(n):
        with sf.update() as data:
            data[f"w{worker}-{i}"] = {"worker": worker, "i": i}


def test_concurrent_writers_in_several_processes_lose_no_entry(tmp_path):
    path = tmp_path / "pods.json"
    workers, per_worker = 4, 40
    ctx = mp.get_context("spawn")  # fresh interpreters, like separate autopod commands
    procs = [ctx.Process(target=_writer, args=(str(path), w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads(path.read_text())
    assert len(data) == workers * per_worker
    assert data["w3-39"] == {"worker": 3, "i": 39}


def test_update_is_atomic_and_private(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    sf = StateFile(d / "tunnels.json")
    with sf.update() as data:
        data["a"] = 1
    assert sf.read() == {"a": 1}
    assert oct(os.stat(sf.path).st_mode & 0o777) == "0o600"
    # No temporary files are left behind.
    assert sorted(p.name for p in d.iterdir()) == ["tunnels.json", "tunnels.json.lock"]


def test_failed_update_writes_nothing(tmp_path):
    sf = StateFile(tmp_path / "pods.json")
    with sf.update() as data:
        data["keep"] = True
    with pytest.raises(RuntimeError):
        with sf.update() as data:
            data["half"] = True
            raise RuntimeError("boom")
    assert sf.read() == {"keep": True}


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"a": 1'])
def test_corrupt_file_is_reported_kept_and_never_overwritten(tmp_path, content):
    path = tmp_path / "pods.json"
    path.write_bytes(content)
    sf = StateFile(path)
    with pytest.raises(ConfigError) as err:
        with sf.update() as data:
            data["new"] = 1
    msg = str(err.value)
    assert str(path) in msg and "corrupt" in msg
    assert err.value.exit_code == ExitCode.USAGE
    assert path.read_bytes() == content  # untouched
    backups = list(tmp_path.glob("pods.json.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == content
    with pytest.raises(ConfigError):  # a second attempt fails the same way, one backup only
        sf.read()
    assert len(list(tmp_path.glob("pods.json.corrupt-*"))) == 1


def test_missing_and_empty_files_read_as_empty(tmp_path):
    assert StateFile(tmp_path / "nope.json").read() == {}
    (tmp_path / "empty.json").write_text("")
    assert StateFile(tmp_path / "empty.json").read() == {}


# -- claims: one process at a time, and a second one learns which ---------------------------------------

HOLD = """
import subprocess, sys, time
from autopod.core.state import Claim
c = Claim("test", "batch-1")
assert c.take("comfy.run --resume") is None
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # like a tunnel daemon
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_claim_names_its_holder_and_goes_with_it_on_sigkill(autopod_home):
    import signal
    import subprocess
    import sys

    from autopod.core.state import Claim

    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "AUTOPOD_HOME": str(autopod_home)})
    grandchild = int(holder.stdout.readline())
    try:
        mine = Claim("test", "batch-1")
        busy = mine.take("comfy.watch")
        assert busy is not None and busy.pid == holder.pid and busy.what == "comfy.run --resume"
        assert f"autopod process {holder.pid} (comfy.run --resume, since " in busy.describe()
        assert Claim("test", "batch-1").holder().pid == holder.pid
        assert Claim("test", "batch-2").take("comfy.watch") is None  # another key is another lock
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        # Gone with the process, though the process it started lives on (it did not inherit the lock).
        os.kill(grandchild, 0)
        assert mine.take("comfy.watch") is None
        assert Claim("test", "batch-1").holder().pid == os.getpid()
        # Within one process too, a second claim is refused: it names this process.
        again = Claim("test", "batch-1").take("comfy.fetch")
        assert again is not None and again.pid == os.getpid() and again.what == "comfy.watch"
        mine.release()
        assert Claim("test", "batch-1").holder() is None  # the record is cleared on release
        with Claim("test", "batch-1") as c:
            assert c.take("comfy.fetch") is None
    finally:
        holder.kill()
        holder.wait(10)
        os.kill(grandchild, signal.SIGKILL)


def test_exclusive_is_the_same_lock_as_filelocks_and_says_who_waits(autopod_home):
    import threading

    from filelock import FileLock, Timeout

    from autopod.core.errors import Conflict
    from autopod.core.state import exclusive, lock_path

    autopod_home.mkdir(parents=True, exist_ok=True)
    path = lock_path("comfy-fetch", "p1")
    with exclusive("comfy-fetch", "p1", timeout=1, what="fetch p1"):
        assert path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(Timeout):  # an autopod that still locks through filelock waits for it
            FileLock(str(path), timeout=0.1).acquire()
        seen = []
        t = threading.Thread(target=lambda: seen.append(_try_exclusive(exclusive, Conflict)))
        t.start()
        t.join()
        assert isinstance(seen[0], Conflict)  # so does another thread of this process
    with FileLock(str(path)):  # and the other way round
        with pytest.raises(Conflict, match=r"busy to fetch p1 \(waited 0s\)"):
            with exclusive("comfy-fetch", "p1", timeout=0.2, what="fetch p1"):
                pass
    with exclusive("comfy-fetch", "p1", timeout=1, what="fetch p1"):  # released on leaving
        pass


def _try_exclusive(exclusive, conflict):
    try:
        with exclusive("comfy-fetch", "p1", timeout=0.2, what="fetch p1"):
            return AssertionError("taken twice")
    except conflict as e:
        return e
