"""The history checker: correct stores pass, every deliberately broken store is caught.

Histories come from real threads running a random mix of operations through the recording
wrapper (``history_tools.workload``), and from hand-written ones where a case is exact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from storeharness.harness.history import (
    TIMEOUT,
    UNKNOWN,
    History,
    Op,
    Recorder,
    RecordingStore,
    check,
    load,
    timeline,
)
from storeharness.stores import FileStore, HashStore

from .history_tools import BROKEN, broken, workload

MS = 1_000_000


def op(i: int, rank: int, name: str, keys: tuple[str, ...], args: tuple[Any, ...], call: int,
       ret: int | None, result: object) -> Op:  # fmt: skip
    return Op(i, rank, 0, name, keys, args, call * MS, None if ret is None else ret * MS, result)


#: Bugs that show only when two threads meet inside one operation (scheduling decides).
RACES = {"lost update in add", "non-atomic compare_set"}


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_every_broken_store_is_caught(bug: str) -> None:
    caught = []
    for seed in range(5):
        verdict = check(workload(broken(BROKEN[bug]), seed=seed))
        caught.append(verdict.ok is False)
        if verdict.ok is False:
            assert verdict.failure is not None and verdict.failure.ops, verdict
        if bug in RACES and verdict.ok is False:
            break  # a race needs one history that shows it
    # a deterministic bug is caught in every history; a race in one of five at most
    assert all(caught) if bug not in RACES else any(caught), f"{bug}: caught {caught}"


def test_hash_store_passes() -> None:
    for seed in range(3):
        verdict = check(workload(HashStore().clone, seed=seed))  # clone() is the store itself
        assert verdict.ok is True, verdict.failure.text() if verdict.failure else verdict


def test_file_store_passes(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    verdict = check(workload(lambda: FileStore(path), threads=2, ops=60, queues=False))
    assert verdict.ok is True, verdict.failure.text() if verdict.failure else verdict


def test_stale_read_smallest_part_names_the_contradiction() -> None:
    h = History.build([
        op(0, 0, "set", ("k",), (b"1",), 0, 10, None),
        op(1, 1, "get", ("k",), (), 20, 30, b"1"),
        op(2, 0, "set", ("k",), (b"2",), 40, 50, None),
        op(3, 1, "get", ("k",), (), 60, 70, b"1"),
        op(4, 0, "set", ("other",), (b"x",), 0, 100, None),
    ])  # fmt: skip
    verdict = check(h)
    assert verdict.ok is False and verdict.failure is not None
    assert verdict.failure.keys == ("k",)
    assert verdict.failure.culprit.call == 60 * MS
    text = verdict.failure.text()
    assert "<-- contradiction" in text and "rank 0:" in text and "'other'" not in text
    page = timeline(h)
    assert 'class="op part bad"' in page and "get(&#x27;k&#x27;) -&gt; b&#x27;1&#x27;" in page


def test_runner_event_labels_sit_in_a_band_of_their_own_above_the_lanes() -> None:
    ops = [op(0, 0, "set", ("k",), (b"1",), 0, 10, None), op(1, 1, "get", ("k",), (), 5, 30, b"1")]
    events = [(1 * MS, "SIGSTOP sent to rank 1"), (2 * MS, "SIGCONT sent to rank 1"),
              (25 * MS, "server killed")]  # fmt: skip
    page = timeline(History.build(ops, events=events))
    # the two close together take a row each; the later one fits in the first row again
    assert page.count('<span style="top:0px">') == 2 and page.count('<span style="top:14px">') == 1
    assert "padding-top:30px" in page  # the lanes start below both rows
    assert "padding-top:0px" in timeline(History.build(ops))  # no events: no band


def test_unknown_outcomes_may_take_effect_late_or_never() -> None:
    late = [
        op(0, 0, "set", ("k",), (b"1",), 0, None, UNKNOWN),  # connection broke
        op(1, 1, "get", ("k",), (), 50, 60, TIMEOUT),  # not yet...
        op(2, 1, "get", ("k",), (), 70, 80, b"1"),  # ...then it took effect
    ]
    assert check(History.build(late)).ok is True
    never = [op(0, 0, "add", ("n",), (1,), 0, None, UNKNOWN),
             op(1, 1, "add", ("n",), (1,), 50, 60, 1)]  # fmt: skip
    assert check(History.build(never)).ok is True
    # but a known outcome is held to: two completed adds cannot both return 1
    twice = [*never, op(2, 1, "add", ("n",), (1,), 70, 80, 1)]
    assert check(History.build(twice)).ok is False


def test_multi_key_operations_join_their_keys() -> None:
    # check(['a', 'b']) is atomic: it cannot see b without a when a was set first and never
    # deleted; split per key, this history would wrongly pass.
    h = [
        op(0, 0, "set", ("a",), (b"1",), 0, 10, None),
        op(1, 0, "set", ("b",), (b"1",), 20, 30, None),
        op(2, 1, "check", ("a", "b"), (), 40, 50, False),
    ]
    verdict = check(History.build(h))
    assert verdict.ok is False and verdict.parts == 1
    # an atomic multi_get must see both writes of an atomic multi_set or neither
    torn = [
        op(0, 0, "multi_set", ("a", "b"), ((b"1", b"1"), True), 0, 10, None),
        op(1, 0, "multi_set", ("a", "b"), ((b"2", b"2"), True), 20, 60, None),
        op(2, 1, "multi_get", ("a", "b"), (True,), 30, 50, [b"2", b"1"]),
    ]
    assert check(History.build(torn)).ok is False
    # the same torn read from a store whose multi ops are loops of get/set is legitimate
    loose = [
        op(0, 0, "multi_set", ("a", "b"), ((b"1", b"1"), False), 0, 10, None),
        op(1, 0, "multi_set", ("a", "b"), ((b"2", b"2"), False), 20, 60, None),
        op(2, 1, "multi_get", ("a", "b"), (False,), 30, 50, [b"2", b"1"]),
    ]
    assert check(History.build(loose)).ok is True


def test_num_keys_spans_every_key() -> None:
    h = [
        op(0, 1, "num_keys", (), (), 0, 5, 1),  # one key nobody here wrote (the run's mark)
        op(1, 0, "set", ("a",), (b"1",), 10, 20, None),
        op(2, 0, "set", ("b",), (b"1",), 30, 40, None),
        op(3, 1, "num_keys", (), (), 50, 60, 3),
    ]
    verdict = check(History.build(h))
    assert verdict.ok is True and verdict.parts == 1
    h[3] = op(3, 1, "num_keys", (), (), 50, 60, 2)
    assert check(History.build(h)).ok is False


def test_wait_on_several_keys_needs_each_at_some_moment() -> None:
    h = [
        op(0, 0, "set", ("a",), (b"1",), 0, 10, None),
        op(1, 0, "delete_key", ("a",), (), 20, 30, True),
        op(2, 0, "set", ("b",), (b"1",), 40, 50, None),
        op(3, 1, "wait", ("a", "b"), (None,), 5, 60, None),  # a then b: each existed
    ]
    assert check(History.build(h)).ok is True
    h[3] = op(3, 1, "wait", ("a", "b"), (None,), 35, 60, None)  # a was gone the whole time
    assert check(History.build(h)).ok is False


def test_budget_gives_unknown_not_a_hang() -> None:
    # many concurrent unknown writes and contradicting reads: a large search
    ops = [op(i, i, "set", ("k",), (str(i).encode(),), 0, None, UNKNOWN) for i in range(18)]
    ops += [op(100 + i, 100 + i, "get", ("k",), (), 10 + 2 * i, 11 + 2 * i, b"nope")
            for i in range(3)]  # fmt: skip
    verdict = check(History.build(ops), budget=0.05)
    assert verdict.ok in (None, False)
    if verdict.ok is None:
        assert "budget" in str(verdict)


def test_recording_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "rank-0.history"
    code = (
        "import os, signal\n"
        "from storeharness.harness.history import Recorder, RecordingStore\n"
        "from storeharness.stores import HashStore\n"
        f"s = RecordingStore(HashStore(), Recorder({str(path)!r}, 0))\n"
        "s.set('a', '1'); s.add('n', 5)\n"
        "s._rec.invoke(0, 'set', ('b',), (b'2',))  # invoked, never completed\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ops = load([(0, str(path))]).ops
    assert [(o.name, o.result) for o in ops] == [("set", None), ("add", 5), ("set", UNKNOWN)]
    assert ops[2].ret is None and ops[0].call <= ops[0].ret <= ops[1].call  # type: ignore[operator]


def test_recording_store_records_errors_and_clones(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "r.history", 3)
    store = RecordingStore(HashStore(), rec)
    store.set("k", "v")
    with pytest.raises(TimeoutError):
        store.wait(["missing"], 0.01)
    store.clone().get("k")
    rec.close()
    ops = load([(3, str(tmp_path / "r.history"))]).ops
    assert [(o.name, o.client, o.result) for o in ops] == [
        ("set", 0, None), ("wait", 0, TIMEOUT), ("get", 1, b"v")
    ]  # fmt: skip
    assert all(o.rank == 3 for o in ops)


def test_history_files_are_private(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "r.history", 0)
    rec.close()
    assert os.stat(tmp_path / "r.history").st_mode & 0o077 == 0
    assert tempfile.gettempdir()  # (the test uses only tmp_path)
