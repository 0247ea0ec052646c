"""The exit-code and JSON contract, checked for every task in the namespace.

The table is built from the namespace itself, so a new task is covered by existing: each
task must take --json, and for each of its flags a list of bad inputs must exit 2 with
exactly one JSON document on stdout and one `error:` line on stderr, before anything runs.

The tasks the console script answers without invoke (``autopod.launch``) are checked through
that entry too: it must hand every such line to the full CLI, or answer it the same way.
"""

from __future__ import annotations

import json

import pytest

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


# Every flag that is not repeatable, switches included, in the form a user types it (--no-wait).
ONCE = [(t, f"--no-{a.names[0]}" if a.kind is bool and a.default is True else f"--{a.names[0]}", a.kind is bool)
        for t in TASKS for a in ns[t].get_arguments() if a.kind is not list]


@pytest.mark.parametrize("task,flag,switch", ONCE, ids=[f"{t}{f}" for t, f, _ in ONCE])
def test_every_flag_given_twice_is_a_usage_error(task, flag, switch, cli):
    twice = [flag, flag] if switch else [f"{flag}=1", flag, "2"]
    doc = _one_failure_document(cli(task, *twice, *([] if flag == "--json" else ["--json"])))
    assert f"{flag} is given twice to {task}" in doc["msg"], doc["msg"]


def test_a_switch_and_its_opposite_are_one_flag(cli):
    doc = _one_failure_document(cli("pod.create", "--wait", "--no-wait", "--json"))
    assert "--wait and --no-wait are both given to pod.create" in doc["msg"]


@pytest.mark.parametrize("argv", [("--debug", "pod.list", "--debug", "--json"), ("-d", "pod.list", "--debug", "--json"),
                                  ("pod.list", "--debug", "--json", "--debug")])
def test_a_core_flag_given_twice_is_a_usage_error(argv, cli):
    doc = _one_failure_document(cli(*argv))
    assert "given" in doc["msg"] and "debug" in doc["msg"]


@pytest.mark.parametrize("task", TASKS)
def test_words_after_a_double_dash_are_a_usage_error(task, cli):
    doc = _one_failure_document(cli(task, "--json", "--", "BATCH"))
    assert "after '--'" in doc["msg"] and "BATCH" in doc["msg"]


@pytest.mark.parametrize("argv", [("pod.list", "--json", "--json"), ("volume.list", "--json", "--json"),
                                  ("comfy.status", "--json", "--json"), ("pod.list", "--json", "--", "x"),
                                  ("volume.list", "--json", "--", "x"), ("comfy.status", "--json", "--", "x")],
                         ids=" ".join)
def test_the_console_scripts_quick_paths_keep_the_flag_contract(argv, run_autopod):
    """``autopod pod.list``, ``volume.list`` and ``comfy.status`` are answered without invoke when plain."""
    r = run_autopod(*argv)
    doc = _one_failure_document(r)
    assert "given twice" in doc["msg"] or "after '--'" in doc["msg"]


# Every flag that takes a number or a duration, with a value past its range: exit 2, naming the range.
HUGE = "9" * 30
BOUNDED = [("comfy.run", "--timeout", "1e99", "x.json"), ("comfy.run", "--timeout", HUGE, "x.json"),
           ("comfy.run", "--repeat", HUGE, "x.json"), ("comfy.run", "--max-queued", HUGE, "x.json"),
           ("comfy.watch", "--timeout", "1e99"), ("comfy.watch", "--timeout", HUGE), ("comfy.status", "--wait", "1e99"),
           ("comfy.jobs", "--limit", HUGE), ("comfy.history", "--limit", HUGE),
           ("pod.wait", "--timeout", HUGE), ("pod.start", "--timeout", HUGE), ("pod.create", "--timeout", HUGE),
           ("pod.up", "--timeout", HUGE), ("tunnel.start", "--timeout", HUGE), ("tunnel.start", "--local-port", HUGE),
           ("sim.start", "--latency", "1e99"), ("sim.start", "--fail-every", HUGE), ("sim.start", "--hang-every", HUGE),
           ("sim.start", "--boot-seconds", "1e99"), ("sim.start", "--comfy-ready-after", "1e99"),
           ("sim.start", "--comfy-ws-drop", HUGE)]


@pytest.mark.parametrize("case", BOUNDED, ids=[f"{c[0]}{c[1]}={c[2][:4]}" for c in BOUNDED])
def test_a_number_past_its_range_is_a_usage_error_naming_the_range(case, cli):
    task, flag, value, *rest = case
    doc = _one_failure_document(cli(task, *rest, flag, value, "--json"))
    assert f"{flag} must be between" in doc["msg"], doc["msg"]


def test_every_number_read_from_a_flag_has_both_bounds():
    """``core.flags.number`` requires them; a call that passes None would make the range open again."""
    import ast
    from pathlib import Path

    import autopod

    calls = 0
    for path in Path(autopod.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "number":
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                for bound in ("minimum", "maximum"):
                    assert bound in kw and not (isinstance(kw[bound], ast.Constant) and kw[bound].value is None), \
                        f"{path}:{node.lineno}: number() without a {bound}"
    assert calls >= 20


# A setting in the environment that says nothing is bad input, as a flag's value is: never "the default".
ENV = [("AUTOPOD_RUNPOD_API", ("pod.list",)), ("RUNPOD_API_KEY", ("pod.list",)),
       ("RUNPOD_API_BASE_URL", ("pod.list",)), ("AUTOPOD_HOME", ("comfy.jobs",)),
       ("AUTOPOD_INVENTORY", ("tunnel.status", "--pod", "flux")), ("RUNPOD_ENDPOINT_BASE_URL", ("endpoint.purge", "x"))]


@pytest.mark.parametrize("value", ["", " ", " rest", "rest\n"], ids=repr)
@pytest.mark.parametrize("name,argv", ENV, ids=[n for n, _ in ENV])
def test_an_empty_or_padded_setting_in_the_environment_is_a_usage_error(name, argv, value, cli, monkeypatch,
                                                                        tmp_path):
    monkeypatch.chdir(tmp_path)  # a padded AUTOPOD_HOME taken as it is would be a folder here
    monkeypatch.setenv("RUNPOD_API_KEY", "sim-key")
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9")  # never reached: refused before any call
    monkeypatch.setenv(name, value)
    doc = _one_failure_document(cli(*argv, "--json"))
    assert name in doc["msg"] and ("empty" in doc["msg"] or "blanks" in doc["msg"]), doc["msg"]


def test_an_empty_ssh_passphrase_is_a_usage_error_and_blanks_inside_one_are_kept(monkeypatch, tmp_path):
    from autopod.core.errors import ConfigError
    from autopod.tunnels.local import load_private_key

    monkeypatch.setenv("AUTOPOD_SSH_PASSPHRASE", "")
    with pytest.raises(ConfigError, match="AUTOPOD_SSH_PASSPHRASE is set but empty"):
        load_private_key(tmp_path / "id_ed25519")
    monkeypatch.setenv("AUTOPOD_SSH_PASSPHRASE", " two words ")  # a passphrase may hold any blanks
    with pytest.raises(ConfigError, match="does not exist"):
        load_private_key(tmp_path / "id_ed25519")
