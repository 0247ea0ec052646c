"""The console script answers a plain ``comfy.run`` line itself, without invoke (``autopod.launch``), and
must print exactly what the invoke task prints, with the same exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from comfy_fixtures import empty_save

from autopod import launch

RUN_DEFAULTS = {"workflow": [], "pod": None, "fleet": None, "set": [], "input": [], "sweep": [], "repeat": None,
                "seed": None, "job": None, "output_dir": None, "output": None, "timeout": None, "max_queued": None,
                "resume": None, "then": None, "no_tunnel": False, "previews": False, "detach": False,
                "dry_run": False, "pull_missing": False, "no_sheet": False, "resubmit_unknown": False, "json": False,
                "endpoint": None,
                "object_info": None}


def flags(**kw):
    return {**RUN_DEFAULTS, **kw}


@pytest.mark.parametrize("argv,expect", [
    (["comfy.run", "a.json"], flags(workflow=["a.json"])),
    (["comfy.run", "a.json", "b.json", "--set", "1.w=2", "--set", "Canvas.text=@t.txt", "--json"],
     flags(workflow=["a.json", "b.json"], set=["1.w=2", "Canvas.text=@t.txt"], json=True)),
    (["comfy.run", "--job", "j.yml", "--pod", "flux", "--sweep", "1.seed=1..4", "--repeat", "2", "--seed",
      "random", "--output-dir", "out", "--output", "{job}/{filename}", "--timeout", "60", "--max-queued", "3",
      "--previews", "--detach", "--dry-run", "--no-tunnel", "--input", "LoadImage=cat.png"],
     flags(job="j.yml", pod="flux", sweep=["1.seed=1..4"], repeat="2", seed="random", output_dir="out",
           output="{job}/{filename}", timeout="60", max_queued="3", previews=True, detach=True, dry_run=True,
           no_tunnel=True, input=["LoadImage=cat.png"])),
    (["comfy.run", "--fleet", "flux", "a.json", "--then", "stop"], flags(fleet="flux", workflow=["a.json"], then="stop")),
    (["comfy.run", "--resume", "B1", "--fleet", "flux"], flags(resume="B1", fleet="flux")),
    (["comfy.run", "a.json", "--pull-missing"], flags(workflow=["a.json"], pull_missing=True)),
    (["comfy.run", "a.json", "--no-sheet"], flags(workflow=["a.json"], no_sheet=True)),
    (["comfy.run", "--resume", "b1", "--resubmit-unknown"], flags(resume="b1", resubmit_unknown=True)),
    (["comfy.run", "a.json", "--endpoint", "render", "--object-info", "oi.json", "--then", "purge"],
     flags(workflow=["a.json"], endpoint="render", object_info="oi.json", then="purge")),
    (["comfy.run", "a.json", "--endpoint", "e", "--endpoint", "f"], None),  # repeated
    (["comfy.run", "a.json", "--pod", "p", "--pod", "q"], None),  # repeated: the full CLI refuses it
    (["comfy.run", "a.json", "--json", "--json"], None),
    (["comfy.run", "a.json", "--set=1.w=2"], None),  # --flag=value: the full CLI parses it
    (["comfy.run", "a.json", "--set"], None),  # missing value: the full CLI words the error
    (["comfy.run", "a.json", "--pod", ""], None),  # empty
    (["comfy.run", "a.json", "--pod", "\udcff"], None),  # not UTF-8
    (["comfy.run", "a.json", "--timeout", "-5"], None),  # looks like a flag
    (["comfy.run", "a.json", "--debug"], None),
    (["comfy.run", "a.json", "--help"], None),
    (["comfy.run", "a.json", "-h"], None),
    (["comfy.run", "a.json", "--no-such-flag"], None),
    (["comfy.run", "a.json", "comfy.jobs"], None),  # a chain: invoke runs it
    (["comfy.run", "pod.json"], None),  # may name a task: the full CLI decides (here: a workflow file)
    (["pod.up", "--name", "x", "comfy.run", "a.json"], None),
    (["--debug", "comfy.run", "a.json"], None),
    (["comfy.run"], flags()),  # no workflow: run_options/plan refuse it, as the task does
])
def test_quick_path_takes_only_plain_run_command_lines(argv, expect):
    from autopod.launch import parse_comfy_run

    assert parse_comfy_run(argv) == expect


def _same(text: str) -> str:
    """Output with what differs between two runs of the same command masked: ids, times, counters, and the
    "running" line, which shows only when the prompt's execution_start event reaches autopod before its result
    is read (on a busy machine a prompt this small can be done first; its result line shows either way)."""
    text = re.sub(r"^.*: running \(\d+ nodes\)\n", "", text, flags=re.M)
    text = re.sub(r"\b\d{8}-\d{6}-[0-9a-f]{4}\b", "BATCH", text)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", text)
    text = re.sub(r"\b[0-9a-f]{32}\b", "CLIENT", text)
    text = re.sub(r"\b[0-9a-f]{8}\b", "ID8", text)
    text = re.sub(r"_\d{5}_", "_N_", text)
    return re.sub(r"out-(quick|task)", "out", text)


@pytest.mark.parametrize("args,code", [
    ([], 0),
    (["--json"], 0),
    (["--set", "1.width=24", "--dry-run"], 0),
    (["--set", "1.width=24", "--dry-run", "--json"], 0),
    (["--detach"], 0),
    (["--set", "1.width=0", "--json"], 2),  # checked against the node definitions, before anything is sent
    (["--set", "1.width=0"], 2),
    (["--seed", "sometimes", "--json"], 2),  # run_options
    (["--max-queued", "0"], 2),
    (["--then", "stop", "--no-tunnel"], 2),
    (["--output", "{nope}"], 2),
])
def test_quick_path_prints_what_the_task_prints(comfy, cli, console, tmp_path, args, code):
    wf = tmp_path / "tiny.json"
    wf.write_text(json.dumps(empty_save("tiny", width=8, height=8)))
    runs = {}
    for name, entry in (("quick", console), ("task", cli)):
        argv = ["comfy.run", str(wf), "--no-tunnel", "--output-dir", str(tmp_path / f"out-{name}"), *args]
        runs[name] = entry(*argv)
    assert runs["quick"].code == runs["task"].code == code, (runs["quick"].err, runs["task"].err)
    assert _same(runs["quick"].out) == _same(runs["task"].out)
    assert _same(runs["quick"].err) == _same(runs["task"].err)
    if "--json" in args:
        json.loads(runs["quick"].out)  # one document


def test_a_failed_prompt_exits_1_on_both(comfy, cli, console, tmp_path):
    wf = tmp_path / "fail.json"
    prompt = empty_save("x", width=8, height=8)
    prompt["3"] = {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "boom"}}
    prompt["2"]["inputs"]["images"] = ["3", 0]
    wf.write_text(json.dumps(prompt))
    quick = console("comfy.run", str(wf), "--no-tunnel", "--output-dir", str(tmp_path / "out"), "--json")
    task = cli("comfy.run", str(wf), "--no-tunnel", "--output-dir", str(tmp_path / "out"), "--json")
    assert quick.code == task.code == 1
    assert quick.json["failed"] is True and "boom" in quick.json["prompts"][0]["error"]


def test_the_quick_path_skips_invoke_and_the_task_collections(comfy, tmp_path):
    wf = tmp_path / "tiny.json"
    wf.write_text(json.dumps(empty_save("tiny", width=8, height=8)))
    code = ("import sys\nfrom autopod.launch import main\nsys.argv = ['autopod'] + sys.argv[1:]\ntry:\n    main()\n"
            "finally:\n    print(sorted(m for m in sys.modules if m.split('.')[0] in ('invoke', 'runpod', 'tabulate')"
            " or m.startswith('autopod.tasks')), file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code, "comfy.run", str(wf), "--no-tunnel", "--output-dir",
                        str(tmp_path / "out"), "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["counts"] == {"success": 1}
    assert p.stderr.strip().splitlines()[-1] == "[]"


def test_the_quick_path_knows_every_collection_so_a_chain_is_never_read_as_workflow_files():
    from autopod.cli import ns

    assert set(launch._COLLECTIONS) == {f"{name}." for name in ns.collections}
    assert launch.parse_comfy_run(["comfy.run", "a.json", "endpoint.info"]) is None
    assert launch.parse_comfy_run(["comfy.run", "a.json", "model.list"]) is None


def test_a_plain_run_imports_no_tabulate_filelock_tomllib_or_logging_handlers(comfy, tmp_path):
    wf = tmp_path / "tiny.json"
    wf.write_text(json.dumps(empty_save("tiny", width=8, height=8)))
    code = ("import sys\nfrom autopod.launch import main\nsys.argv = ['autopod'] + sys.argv[1:]\ntry:\n    main()\n"
            "finally:\n    print(sorted(m for m in sys.modules if m.split('.')[0] in ('tabulate', 'wcwidth', 'filelock', "
            "'tomllib', 'concurrent') or m == 'logging.handlers'), "
            "file=sys.stderr)\n")
    for _ in range(2):  # the first run fetches and keeps the node definitions (under a lock); the second is the point
        p = subprocess.run([sys.executable, "-c", code, "comfy.run", str(wf), "--no-tunnel", "--output-dir",
                            str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    head, rule, row = p.stdout.splitlines()[:3]
    assert head.split() == ["#", "PROMPT", "STATUS", "FILES", "ERROR"] and set(rule) == {"-", " "}
    assert row.split()[0] == "0" and row.split()[2:] == ["success", "1", "-"]
    assert p.stderr.strip().splitlines()[-1] == "[]"


def test_plain_tables_are_exactly_what_tabulate_prints():
    import random
    import string

    from tabulate import tabulate

    from autopod.core.output import _cell, _plain_table, table

    rnd = random.Random(20261203)
    chars = string.ascii_letters + string.digits + " -_.:/()'\"#%" + "\t\x1b\u00e9\u6f22"
    plain = 0
    for _ in range(3000):
        ncol, nrow = rnd.randint(1, 6), rnd.randint(0, 4)
        headers = ["".join(rnd.choice(string.ascii_uppercase + " #") for _ in range(rnd.randint(0, 8)))
                   for _ in range(ncol)]
        values = [None, "", " 12 ", "007", "1e5", "nan", "-3", "1,000", True, 1.5, ["a", 1], 0, -12, 10 ** 6]
        body = [[_cell(rnd.choice(values) if rnd.random() < 0.4 else
                       "".join(rnd.choice(chars) for _ in range(rnd.randint(0, 12)))) for _ in range(ncol)]
                for _ in range(nrow)]
        want = tabulate(body, headers=headers, tablefmt="simple", missingval="-", disable_numparse=True)
        got = _plain_table(body, headers)
        if got is not None:
            plain += 1
            assert got == want, (headers, body)
    assert plain > 500  # most tables take the plain way; the rest (wide characters, floats) go to tabulate
    rows = [{"a": "\u6f22\u5b57", "b": 1}, {"a": None, "b": 2.5}]
    assert table(rows, [("a", "A"), ("b", "B")]) == tabulate([["\u6f22\u5b57", 1], [None, 2.5]], headers=["A", "B"],
                                                              tablefmt="simple", missingval="-", disable_numparse=True)
