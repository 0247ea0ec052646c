"""The exit-code and JSON contract, checked for every task in the namespace.

The table is built from the namespace itself, so a new task is covered by existing: each
task must take --json, and for each of its flags a list of bad inputs must exit 2 with
exactly one JSON document on stdout and one `error:` line on stderr, before anything runs.

The tasks the console script answers without invoke (``autopod.launch``) are checked through
that entry too: it must hand every such line to the full CLI, or answer it the same way.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import CliResult

from autopod.cli import ns

TASKS = sorted(ns.task_names)
QUICK = ("comfy.status", "comfy.run", "pod.list", "volume.list")  # what autopod.launch may answer itself


def _with_entries(cases):
    """Each case through invoke (the ``cli`` fixture), and the quick tasks' also through the console script."""
    out = []
    for case in cases:
        task = case[0] if isinstance(case, tuple) else case
        rest = case if isinstance(case, tuple) else (case,)
        out.append(pytest.param(*rest, "cli", id=f"{'-'.join(map(repr, rest))}-cli"))
        if task in QUICK:
            out.append(pytest.param(*rest, "console", id=f"{'-'.join(map(repr, rest))}-console"))
    return out


@pytest.fixture
def console(capsys, monkeypatch):
    """``autopod ARGS...`` through the console script's entry (``autopod.launch.main``), in this process."""
    import autopod.cli
    from autopod import launch

    monkeypatch.setattr(autopod.cli, "main", lambda: autopod.cli.make_program().run())

    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["autopod", *argv])
        code = 0
        try:
            launch.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def entry(request, cli, console):
    return {"cli": cli, "console": console}[request.param]


def _value_flags(task_name):
    task = ns[task_name]
    return [a for a in task.get_arguments() if a.kind is not bool]


# A value that must be refused by any flag that takes one: given but empty, or only blanks.
EMPTY = ["", " ", "\t"]
CASES = [(t, a.names[0], v) for t in TASKS for a in _value_flags(t) for v in EMPTY]


def _one_failure_document(r):
    assert r.code == 2, r
    doc = json.loads(r.out)  # exactly one document: json.loads refuses trailing data
    assert doc["failed"] is True and doc["exit_code"] == 2 and doc["msg"]
    assert r.err.startswith("error: ") and "Traceback" not in r.err
    return doc


def test_the_console_script_answers_only_the_quick_tasks_itself():
    from autopod import launch

    parsers = (launch.parse_listing, launch.parse_comfy_status, launch.parse_comfy_run)
    assert {t for t in TASKS if any(parse([t]) is not None for parse in parsers)} == set(QUICK)


def test_the_table_covers_every_task():
    assert len(TASKS) >= 20 and {"pod.create", "tunnel.start", "comfy.status", "sim.start"} <= set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_takes_json_and_documents_it(task, cli):
    names = {n for a in ns[task].get_arguments() for n in a.names}
    assert "json" in names, f"{task} has no --json"
    r = cli("--help", task)
    assert r.code == 0 and "--json" in r.out


@pytest.mark.parametrize("task,flag,value,entry", _with_entries(CASES), indirect=["entry"])
def test_an_empty_value_is_a_usage_error(task, flag, value, entry):
    doc = _one_failure_document(entry(task, f"--{flag}", value, "--json"))
    assert f"--{flag}" in doc["msg"]


@pytest.mark.parametrize("task,entry", _with_entries(TASKS), indirect=["entry"])
def test_an_unknown_flag_is_a_usage_error_with_one_document(task, entry):
    _one_failure_document(entry(task, "--no-such-flag", "--json"))


@pytest.mark.parametrize("task,entry", _with_entries([t for t in TASKS if _value_flags(t)]), indirect=["entry"])
def test_a_value_flag_without_its_value_is_a_usage_error(task, entry):
    flag = _value_flags(task)[0].names[0]
    doc = _one_failure_document(entry(task, "--json", f"--{flag}"))
    assert f"--{flag}" in doc["msg"]


@pytest.mark.parametrize("task,entry", _with_entries([t for t in TASKS if _value_flags(t)]), indirect=["entry"])
def test_a_value_flag_given_twice_is_a_usage_error(task, entry):
    arg = next((a for a in _value_flags(task) if a.kind is not list), None)
    if arg is None:
        pytest.skip("every value flag is repeatable")
    flag = arg.names[0]
    doc = _one_failure_document(entry(task, f"--{flag}", "a", f"--{flag}", "b", "--json"))
    assert f"--{flag} is given twice" in doc["msg"]


@pytest.mark.parametrize("task,entry", _with_entries(TASKS), indirect=["entry"])
def test_bytes_that_are_not_utf8_are_a_usage_error(task, entry):
    flags = _value_flags(task)
    if not flags:
        pytest.skip("no value flag")
    doc = _one_failure_document(entry(task, f"--{flags[0].names[0]}", "\udcff\udcfe", "--json"))
    assert "UTF-8" in doc["msg"]
