"""The pytest plugin as a user meets it: fixtures, markers, --store, logs on failure."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = """
import pytest
from storeharness import scenario

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

@pytest.mark.needs("cross_process")
def test_cross_process(store_target, store):
    assert store_target != "hash"

@scenario(world_size=1)
def one_process(ctx):
    return ctx.rank

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
    proc = _pytest(tmp_path, "-rs")
    out = proc.stdout
    assert "test_mine[file] PASSED" in out and "test_mine[tcp] PASSED" in out
    assert "test_mine[hash] SKIPPED" in out  # hash cannot be shared by process ranks
    assert "test_only_tcp[tcp] PASSED" in out and "test_only_tcp[file]" not in out
    assert "test_add_errors[hash] PASSED" in out and "test_add_errors[file] PASSED" in out
    # a store lacking what a test needs is skipped saying so, not left out
    assert "test_cross_process[file] PASSED" in out and "test_cross_process[tcp] PASSED" in out
    assert re.search(r"SKIPPED \[1\] .*: hash lacks cross_process", out), out
    # and so is a scenario on a store that cannot take it, with the reason
    assert "test_user.py::one_process[file-process-1] PASSED" in out
    assert re.search(r"SKIPPED \[1\] .*: one_process cannot run on hash: hash cannot be shared "
                     r"by process ranks", out), out  # fmt: skip
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


SQLITE = Path(__file__).resolve().parents[2] / "examples" / "sqlite_store"


def test_a_users_project_keeps_its_own_packages_and_runs_its_own_store(tmp_path: Path) -> None:
    # A project with packages named like our folders, and a helper script in scenarios/ that
    # must never be imported by a test run.
    for package in ("stores", "harness", "scenarios"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"NAME = 'users-{package}'\n")
    (tmp_path / "scenarios" / "generate_load.py").write_text("raise SystemExit('imported!')\n")
    (tmp_path / "test_own.py").write_text(
        "import harness, stores\n\n"
        "def test_own_packages():\n"
        "    assert (stores.NAME, harness.NAME) == ('users-stores', 'users-harness')\n"
    )
    for name in ("sqlitestore.py", "scenario_sqlite.py", "test_sqlitestore.py"):
        (tmp_path / name).write_text((SQLITE / name).read_text())
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    run = functools.partial(
        subprocess.run, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env
    )
    proc = run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=",
                "--rootdir", str(tmp_path), "--store", "sqlitestore:make"])  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_own.py::test_own_packages PASSED" in proc.stdout
    assert "test_every_rank_reads_what_rank_zero_wrote[sqlitestore:make] PASSED" in proc.stdout
    assert "everyone_counts_in[sqlitestore:make-process-6] PASSED" in proc.stdout
    assert "imported!" not in proc.stdout + proc.stderr
    # A scenario file named on the command line is collected once.
    once = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                "--rootdir", str(tmp_path), "--store", "sqlitestore:make", "scenario_sqlite.py",
                "--collect-only"])  # fmt: skip
    assert once.returncode == 0, once.stdout + once.stderr
    assert "4 tests collected" in once.stdout
    cli = run([sys.executable, "-m", "storeharness", "run", "--store", "sqlitestore:SQLiteStore",
               "-q"])  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert re.search(r"= \d+ passed, \d+ skipped in", cli.stdout), cli.stdout  # no queues
    assert "failed" not in cli.stdout


def test_settings_resolve_marker_then_cli_then_env_then_ini(tmp_path: Path) -> None:
    (tmp_path / "test_settings.py").write_text(
        "import pytest\n\n"
        "def test_scale(world):\n"
        "    r = world(lambda ctx: 1, 1, workers='thread', time_limit=10)\n"
        "    assert r.ranks[0].value == 1\n\n"
        "@pytest.mark.storeharness(time_scale='soon')\n"
        "def test_bad_marker(store):\n"
        "    pass\n"
    )
    env = {**os.environ, "STOREHARNESS_TIME_SCALE": "fast"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "--rootdir", str(tmp_path), str(tmp_path / "test_settings.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "STOREHARNESS_TIME_SCALE='fast' (environment): not a number" in proc.stderr
