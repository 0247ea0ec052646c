"""The CLI contract shared by every task: exit codes, stdout/stderr split, no runpod import for help."""

from __future__ import annotations

import subprocess
import sys


def test_unknown_task_is_a_usage_error(cli):
    r = cli("pod.nope")
    assert r.code == 2 and "pod.nope" in r.err and r.out == ""


def test_list_and_help_do_not_import_runpod():
    code = (
        "import sys\n"
        "from autopod.cli import make_program\n"
        "for argv in (['autopod', '--list'], ['autopod', '--help']):\n"
        "    try:\n"
        "        make_program().run(argv)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "assert 'runpod' not in sys.modules, 'runpod was imported'\n"
        "print('clean')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("clean")


def test_invoke_list_in_checkout_does_not_import_runpod():
    from conftest import ROOT

    code = (
        "import sys\n"
        "from invoke.main import program\n"
        "try:\n"
        "    program.run(['invoke', '--list'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'runpod' not in sys.modules\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "pod." in p.stdout


def test_invoke_bad_flag_exits_2_in_checkout():
    from conftest import ROOT

    p = subprocess.run([sys.executable, "-m", "invoke", "tunnel.list", "--no-such-flag"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "no-such-flag" in p.stderr


def test_bad_inventory_is_a_usage_error_naming_file_and_line(cli, tmp_path, monkeypatch):
    inv = tmp_path / "inv.yml"
    inv.write_text("pods:\n  flux:\n    gpus: [RTX 4090]\n    colour: blue\n")
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(inv))
    r = cli("pod.create", "--name", "flux", "--dry-run", "--json")
    assert r.code == 2
    assert f"{inv}:4: unknown key 'colour'" in r.err and "Traceback" not in r.err
    assert r.json["failed"] is True  # --json still gets its one document


def test_corrupt_state_file_is_a_usage_error_and_kept(cli, autopod_home):
    autopod_home.mkdir(parents=True, exist_ok=True)
    (autopod_home / "tunnels.json").write_text("{oops")
    r = cli("tunnel.list")
    assert r.code == 2 and "tunnels.json is corrupt" in r.err and "Traceback" not in r.err
    assert (autopod_home / "tunnels.json").read_text() == "{oops"
