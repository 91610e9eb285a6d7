"""The world runner reports every rank's fate and leaves no process behind."""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path

import pytest

from harness import Fate, run_world
from harness.cli import main
from stores import FileStore, HashStore, Store


def _mixed(store: Store, rank: int, world: int) -> int:
    if rank == 1:
        raise KeyError("rank one fails")
    if rank == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if rank == 3:
        store.set("rank3/pid", str(os.getpid()))
        store.wait(["never-set"], 0)  # blocks until the runner's deadline stops it
    return rank * 10


def test_every_fate_is_reported_and_no_child_survives(tmp_path: Path) -> None:
    opener = functools.partial(FileStore, str(tmp_path / "fs"))
    results = run_world(_mixed, 4, opener, "process", deadline=3.0)
    assert [r.fate for r in results] == [Fate.RETURNED, Fate.RAISED, Fate.DIED, Fate.TIMED_OUT]
    assert results[0].value == 0
    assert "KeyError" in results[1].error and "rank one fails" in results[1].traceback
    assert results[2].exitcode == -signal.SIGKILL
    assert "SIGKILL" in results[2].describe()
    assert results[3].exitcode is not None, "the stuck rank was not reaped"
    pid = int(FileStore(str(tmp_path / "fs")).get("rank3/pid"))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _sum(store: Store, rank: int, world: int) -> int:
    store.add("total", rank)
    store.barrier("b", world, 30)
    return store.add("total", 0)


@pytest.mark.parametrize("workers", ["process", "thread"])
def test_world_shares_one_store(tmp_path: Path, workers: str) -> None:
    opener = functools.partial(FileStore, str(tmp_path / "fs"))
    results = run_world(_sum, 6, opener, workers)
    assert [r.value for r in results] == [15] * 6


def test_thread_world_on_hash_store() -> None:
    results = run_world(_sum, 5, HashStore().clone, "thread")
    assert [r.value for r in results] == [10] * 5


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="world_size"):
        run_world(_sum, 0, HashStore)
    with pytest.raises(ValueError, match="workers"):
        run_world(_sum, 1, HashStore, "fiber")


def test_cli_runs_the_smoke_scenario_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    assert main(["run", "--world-size", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rendezvous_exchange" in text and "3 passed, 0 failed" in text
    rows = json.loads(out.read_text())
    assert {(r["store"], r["workers"]) for r in rows} == {
        ("tcp", "process"),
        ("file", "process"),
        ("hash", "thread"),
    }
    assert all(r["passed"] and len(r["ranks"]) == 3 for r in rows)


def test_cli_refuses_a_store_the_workers_cannot_share() -> None:
    with pytest.raises(SystemExit, match="use --workers thread"):
        main(["run", "--store", "hash", "--workers", "process"])
