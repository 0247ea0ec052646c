"""The exit-code and JSON contract, checked for every task in the namespace.

The table is built from the namespace itself, so a new task is covered by existing: each
task must take --json, and for each of its flags a list of bad inputs must exit 2 with
exactly one JSON document on stdout and one `error:` line on stderr, before anything runs.
"""

from __future__ import annotations

import json

import pytest

from autopod.cli import ns

TASKS = sorted(ns.task_names)


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


def test_the_table_covers_every_task():
    assert len(TASKS) >= 20 and {"pod.create", "tunnel.start", "comfy.status", "sim.start"} <= set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_takes_json_and_documents_it(task, cli):
    names = {n for a in ns[task].get_arguments() for n in a.names}
    assert "json" in names, f"{task} has no --json"
    r = cli("--help", task)
    assert r.code == 0 and "--json" in r.out


@pytest.mark.parametrize("task,flag,value", CASES, ids=[f"{t}--{f}={v!r}" for t, f, v in CASES])
def test_an_empty_value_is_a_usage_error(task, flag, value, cli):
    doc = _one_failure_document(cli(task, f"--{flag}", value, "--json"))
    assert f"--{flag}" in doc["msg"]


@pytest.mark.parametrize("task", TASKS)
def test_an_unknown_flag_is_a_usage_error_with_one_document(task, cli):
    _one_failure_document(cli(task, "--no-such-flag", "--json"))


@pytest.mark.parametrize("task", [t for t in TASKS if _value_flags(t)])
def test_a_value_flag_without_its_value_is_a_usage_error(task, cli):
    flag = _value_flags(task)[0].names[0]
    doc = _one_failure_document(cli(task, "--json", f"--{flag}"))
    assert f"--{flag}" in doc["msg"]


@pytest.mark.parametrize("task", [t for t in TASKS if _value_flags(t)])
def test_a_value_flag_given_twice_is_a_usage_error(task, cli):
    arg = _value_flags(task)[0]
    if arg.kind is list:
        pytest.skip(f"--{arg.names[0]} is repeatable")
    flag = arg.names[0]
    doc = _one_failure_document(cli(task, f"--{flag}", "a", f"--{flag}", "b", "--json"))
    assert f"--{flag} is given twice" in doc["msg"]


@pytest.mark.parametrize("task", TASKS)
def test_bytes_that_are_not_utf8_are_a_usage_error(task, cli):
    flags = _value_flags(task)
    if not flags:
        pytest.skip("no value flag")
    doc = _one_failure_document(cli(task, f"--{flags[0].names[0]}", "\udcff\udcfe", "--json"))
    assert "UTF-8" in doc["msg"]
