"""The parts of fleets that need no pods: the fan-out, its cancel, member names, the shared work queue."""

from __future__ import annotations

import threading
import time

import pytest

from autopod.comfy.spread import WorkQueue
from autopod.core.errors import Interrupted, RemoteError
from autopod.core.fanout import Cancel, Result, count_line, run_all
from autopod.runpod.fleet import member_index, member_name


def test_every_member_gets_a_result_in_order_and_a_failure_stops_no_other():
    def fn(n, _cancel):
        if n == 2:
            raise RemoteError("member 2 broke")
        if n == 3:
            raise ValueError("a bug")
        time.sleep(0.05 * (5 - n))  # later members finish first: the order is still the members'
        return Result(f"m{n}", True, f"m{n} done", changed=n % 2 == 0)

    results = run_all([1, 2, 3, 4], fn, name=lambda n: f"m{n}")
    assert [r.name for r in results] == ["m1", "m2", "m3", "m4"]
    assert [r.status for r in results] == ["ok", "failed", "failed", "changed"]
    assert results[1].msg == "member 2 broke" and results[1].exit_code == 1
    assert results[2].msg.startswith("m3: internal error: ValueError")
    assert count_line(results) == "4 members: 1 changed, 1 ok, 2 failed"


def test_concurrency_is_bounded():
    running, most, lock = [0], [0], threading.Lock()

    def fn(n, _cancel):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return Result(str(n), True, "")

    assert len(run_all(list(range(9)), fn, name=str, concurrency=3)) == 9
    assert most[0] == 3


def test_a_cancelled_wait_raises_interrupted_in_the_worker():
    cancel = Cancel()
    threading.Timer(0.05, cancel.set, args=(Interrupted(15),)).start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted) as e:
        cancel.sleep(30)
    assert time.monotonic() - t0 < 5 and e.value.exit_code == 143


@pytest.mark.parametrize("name,index", [("flux-1", 1), ("flux-12", 12), ("flux-0", None), ("flux-01", None),
                                        ("flux", None), ("flux-1-2", None), ("fluxx-1", None), ("flux-x", None)])
def test_members_are_named_fleet_dash_number(name, index):
    assert member_index("flux", name) == index
    if index:
        assert member_name("flux", index) == name


def test_a_fleet_name_with_regex_characters_matches_only_itself():
    assert member_index("a.b", "a.b-1") == 1 and member_index("a.b", "axb-1") is None


def test_the_work_queue_hands_each_prompt_out_once_and_takes_back_what_a_member_could_not_finish():
    q = WorkQueue(["p1", "p2", "p3"])  # rows stand in for PromptRows
    a, b = q.take(), q.take()
    assert (a, b) == ("p1", "p2") and q.more()
    q.give_back([b])  # its member was taken out: p2 goes first to the next free member
    assert q.take() == "p2"
    q.settled(a)
    assert q.take() == "p3" and q.take() is None
    assert q.more()  # two still held
    q.settled("p2")
    q.settled("p3")
    assert not q.more() and q.left() == 0
