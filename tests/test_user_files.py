"""Files the user names: every reader refuses what is not a regular file, bounds the size, and reads
JSON without NaN or Infinity; each mistake is one line naming the file, exit 2, at once."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from autopod.comfy.batch import parse_sweep
from autopod.comfy.jobfile import load_job
from autopod.comfy.overrides import parse_input, parse_set
from autopod.comfy.workflow import load_workflow
from autopod.core import config
from autopod.core.errors import ExitCode, UsageError
from autopod.core.files import read_line
from autopod.core.inventory import load_inventory
from autopod.sim.control import load_world_file

# What reads a file, given a path to put where the file goes.
READERS = {
    "workflow": load_workflow,
    "job file (YAML)": load_job,
    "job file (JSON)": load_job,
    "--set @file": lambda p: parse_set(f"6.text=@{p}"),
    "--sweep @file": lambda p: parse_sweep(f"6.text=@{p}"),
    "--input": lambda p: parse_input(f"LoadImage={p}"),
    "inventory": load_inventory,
    "sim.start --world": lambda p: load_world_file(str(p)),
}
SUFFIX = {"job file (YAML)": ".yml", "job file (JSON)": ".json", "inventory": ".yml", "sim.start --world": ".yml"}


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    _SOCKETS.append(s)
    return path


def _device(path: Path) -> Path:
    path.symlink_to("/dev/zero")  # endless: read to the end, it fills memory
    return path


def _huge(path: Path) -> Path:
    with path.open("wb") as f:  # sparse: costs no disk
        f.truncate(64 * 1024 * 1024 + 1)
    return path


_SOCKETS: list[socket.socket] = []
KINDS = {"named pipe": (_fifo, "named pipe"), "unix socket": (_socket, "socket"), "/dev/zero": (_device, "device"),
         "64 MiB and a byte": (_huge, "too large")}


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    while _SOCKETS:
        _SOCKETS.pop().close()


def refused(fn, path: Path, timeout: float = 5.0) -> str:
    """The one-line usage error ``fn(path)`` raises; it must come at once, not after a hang."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn(path)
        except BaseException as e:  # noqa: BLE001  (MemoryError from an endless read counts as a failure)
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        if path.is_fifo():  # let the blocked reader go: a writer that closes at once
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"reading {path} did not end within {timeout} s")
    e = box.get("error")
    assert isinstance(e, UsageError), f"expected a usage error, got {box}"
    assert e.exit_code == ExitCode.USAGE and "\n" not in str(e)
    return str(e)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reader", READERS)
def test_every_reader_refuses_what_is_not_a_bounded_regular_file(reader, kind, tmp_path):
    if reader == "--input" and kind.startswith("64 MiB"):
        pytest.skip("an --input file is uploaded as it is read, whatever its size")
    make, words = KINDS[kind]
    path = make(tmp_path / f"bad{SUFFIX.get(reader, '.json')}")
    msg = refused(READERS[reader], path)
    assert str(path) in msg and words in msg, msg


@pytest.mark.parametrize("kind", KINDS)
def test_an_inventory_folder_with_a_bad_file_in_it(kind, tmp_path):
    make, words = KINDS[kind]
    (tmp_path / "inv").mkdir()
    path = make(tmp_path / "inv" / "pods.yml")
    msg = refused(load_inventory, tmp_path / "inv")
    assert str(path) in msg and words in msg, msg


@pytest.mark.parametrize("kind", KINDS)
def test_the_settings_files_are_read_the_same_way(kind, autopod_home, tmp_path):
    make, words = KINDS[kind]
    autopod_home.mkdir(parents=True, exist_ok=True)
    make(autopod_home / "config.yaml")
    assert words in refused(lambda _p: config.user_config(), autopod_home / "config.yaml")
    (autopod_home / "config.yaml").unlink()
    toml = Path("~/.runpod/config.toml").expanduser()
    toml.parent.mkdir(parents=True, exist_ok=True)
    make(toml)
    assert words in refused(lambda _p: config.api_credentials(), toml)
    key = tmp_path / "id_ed25519"
    key.write_text("private")
    make(tmp_path / "id_ed25519.pub")
    assert words in refused(lambda _p: config.public_key_text(key), tmp_path / "id_ed25519.pub")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_in_a_workflow_are_bad_input_naming_the_line(constant, tmp_path):
    path = tmp_path / "wf.json"
    path.write_text('{"3": {"class_type": "KSampler",\n  "inputs": {"text": "NaN stays text", "cfg": ' + constant + "}}}")
    msg = refused(load_workflow, path)
    assert msg.startswith(f"{path}:2: not valid JSON: {constant} ") and "column 47" in msg, msg


def test_nan_in_a_workflow_saved_in_a_png_is_bad_input(tmp_path):
    import struct
    import zlib

    text = b'prompt\0{"3": {"class_type": "KSampler", "inputs": {"cfg": NaN}}}'
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    path = tmp_path / "out.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + b"\0" * 4)
    assert "(prompt chunk):1: not valid JSON: NaN" in refused(load_workflow, path)


@pytest.mark.parametrize("text", ['{"workflow": "wf.json", "repeat": NaN}', '{"workflow": "wf.json",\n "set": [Infinity]}'])
def test_nan_and_infinity_in_a_json_job_file_are_bad_input(text, tmp_path):
    (tmp_path / "wf.json").write_text("{}")
    path = tmp_path / "job.json"
    path.write_text(text)
    msg = refused(load_job, path)
    assert msg.startswith(f"{path}:") and "not valid JSON" in msg and ("NaN" in msg or "Infinity" in msg), msg


def test_a_regular_value_file_is_still_read(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("a cat\n")
    assert parse_set(f"6.text=@{path}").value == "a cat"


def test_the_api_key_line_on_stdin_is_bounded(tmp_path):
    import io

    assert read_line(io.BytesIO(b"rpa_KEY\nmore"), what="--api-key-stdin") == "rpa_KEY"
    with open("/dev/zero", "rb") as endless, \
            pytest.raises(UsageError, match="--api-key-stdin: the line is longer than 4096 bytes"):
        read_line(endless, what="--api-key-stdin")
    with pytest.raises(UsageError, match="not UTF-8"):
        read_line(io.BytesIO(b"\xff\n"), what="--api-key-stdin")


# -- on the command line ---------------------------------------------------------------------------------------


@pytest.fixture
def comfy(autopod_home):
    from autopod.sim.comfyui_standin import ComfyUIStandin

    with ComfyUIStandin() as s:
        autopod_home.mkdir(parents=True, exist_ok=True)
        (autopod_home / "config.yaml").write_text(f"comfy_url: {s.url}\n")
        yield s


def _cli_refuses(cli, *argv):
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", cli(*argv, "--json")), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), f"autopod {' '.join(argv)} hung"
    r = box["r"]
    assert r.code == 2, r
    doc = json.loads(r.out)
    assert doc["failed"] is True and r.err.startswith("error: ") and r.err.count("\n") == 1
    return doc["msg"]


def test_comfy_run_refuses_a_fifo_workflow_and_an_endless_value_file(cli, comfy, tmp_path):
    fifo = _fifo(tmp_path / "wf.json")
    assert "named pipe" in _cli_refuses(cli, "comfy.run", "--no-tunnel", "--dry-run", str(fifo))
    wf = tmp_path / "ok.json"
    wf.write_text(json.dumps({"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["4", 1]}},
                              "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a"}}}))
    assert "device" in _cli_refuses(cli, "comfy.run", "--no-tunnel", "--dry-run", str(wf), "--set", "6.text=@/dev/zero")
    job = _fifo(tmp_path / "job.yml")
    assert "named pipe" in _cli_refuses(cli, "comfy.run", "--no-tunnel", "--dry-run", "--job", str(job))
    nan = tmp_path / "nan.json"
    nan.write_text('{"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["4", NaN]}}}')
    assert "NaN" in _cli_refuses(cli, "comfy.run", "--no-tunnel", "--dry-run", str(nan))
