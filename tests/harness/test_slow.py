"""Slow scenarios (``slow=True`` or a pytest ``slow`` mark) stay out of default runs: the CLI
takes them with ``--slow``, pytest with ``-m slow``; a scenario named outright always runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storeharness.harness import scenario
from storeharness.harness.cli import main
from storeharness.harness.scenario import ScenarioError

SLOW = """
import pytest
from storeharness.harness import scenario

@scenario(world_size=2, workers="thread", slow=True)
def declared_slow(ctx):
    return ctx.rank

@pytest.mark.slow
@scenario(world_size=2, workers="thread")
def marked_slow(ctx):
    return ctx.rank

@scenario(world_size=2, workers="thread")
def quick(ctx):
    return ctx.rank
"""


def test_slow_is_declared_or_marked() -> None:
    @scenario(world_size=2, slow=True)
    def a(ctx: object) -> None: ...

    @pytest.mark.slow
    @scenario(world_size=2)
    def b(ctx: object) -> None: ...

    @scenario(world_size=2)
    def c(ctx: object) -> None: ...

    assert a.slow and b.slow and not c.slow
    with pytest.raises(ScenarioError, match=r"slow='yes'; give True or False"):
        scenario(world_size=2, slow="yes")(lambda ctx: None)  # type: ignore[call-overload]


def test_cli_leaves_slow_scenarios_out_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "scenario_slow.py"
    path.write_text(SLOW)
    assert main(["list", str(path), "--store", "hash"]) == 0
    out, err = capsys.readouterr()
    assert "quick:" in out and "declared_slow" not in out and "marked_slow:" not in out
    assert "declared_slow skipped (slow: run it with --slow)" in err
    assert "marked_slow skipped (slow: run it with --slow)" in err
    assert main(["list", str(path), "--store", "hash", "--slow"]) == 0
    out, _ = capsys.readouterr()
    assert "declared_slow:" in out and "marked_slow:" in out and "quick:" in out
    assert main(["run", f"{path}::declared_slow", "--store", "hash", "-q"]) == 0
    out, _ = capsys.readouterr()
    assert "1 passed" in out  # named outright: it runs


def _pytest(tmp_path: Path, *args: str) -> str:
    (tmp_path / "scenario_slow.py").write_text(SLOW)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path / "scenario_slow.py"),
         "--store", "hash", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    return proc.stdout


def test_pytest_skips_slow_scenarios_unless_selected_with_m(tmp_path: Path) -> None:
    out = _pytest(tmp_path)
    assert "quick[hash-thread-2] PASSED" in out
    assert "declared_slow[hash-thread-2] SKIPPED" in out
    assert "marked_slow[hash-thread-2] SKIPPED" in out
    assert "select it with -m slow" in _pytest(tmp_path, "-rs")
    out = _pytest(tmp_path, "-m", "slow")
    assert "declared_slow[hash-thread-2] PASSED" in out
    assert "marked_slow[hash-thread-2] PASSED" in out
    assert "quick[hash-thread-2]" not in out and "1 deselected" in out
