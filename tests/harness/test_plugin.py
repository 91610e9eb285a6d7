"""The pytest plugin as a user meets it: fixtures, markers, --store, logs on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = """
import pytest

def test_mine(world, store):
    store.set("k", "v")
    result = world(lambda ctx: ctx.store.get("k"), 4, workers="process")
    assert result.values() == [b"v"] * 4

@pytest.mark.stores("tcp")
def test_only_tcp(store_target, store):
    assert store_target == "tcp"

@pytest.mark.needs("add_errors")
def test_add_errors(store_target, store):
    store.set("n", "not a number")
    with pytest.raises(ValueError):
        store.add("n", 1)

def test_fails_with_rank_logs(world):
    def fn(ctx):
        ctx.log.info("rank %d says hello", ctx.rank)
        assert ctx.rank != 1, "rank one objects"
    result = world(fn, 2, workers="thread")
    assert [r.fate.value for r in result] == ["returned"] * 2
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_user.py").write_text(TESTS)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=",
         "--rootdir", str(tmp_path), str(tmp_path / "test_user.py"), *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip


def test_fixtures_markers_and_rank_logs(tmp_path: Path) -> None:
    proc = _pytest(tmp_path)
    out = proc.stdout
    assert "test_mine[file] PASSED" in out and "test_mine[tcp] PASSED" in out
    assert "test_mine[hash] SKIPPED" in out  # hash cannot be shared by process ranks
    assert "test_only_tcp[tcp] PASSED" in out and "test_only_tcp[file]" not in out
    assert "test_add_errors[hash] PASSED" in out and "test_add_errors[file] PASSED" in out
    # our client and server negotiate error replies: a bad add keeps the connection
    assert "test_add_errors[tcp] PASSED" in out
    # The failing world attaches each rank's log to the report.
    assert "test_fails_with_rank_logs[file] FAILED" in out
    assert "world 0 rank 1 log" in out and "rank 1 says hello" in out
    assert "rank one objects" in out


def test_store_option_picks_stores_and_refuses_unknown_ones(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, "--store", "file", "-k", "test_mine")
    assert "test_mine[file] PASSED" in proc.stdout and "test_mine[tcp]" not in proc.stdout
    bad = _pytest(tmp_path, "--store", "redis")
    assert bad.returncode == 4  # a usage error, as pytest's own
    assert "unknown store 'redis'; choose from hash, file, tcp" in bad.stderr
