"""storeharness run/list, and a new user's scenario file run by both pytest and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from storeharness.harness.cli import main

# What the README promises a new user can write: 8 process ranks, SIGINT to rank 3 while it
# waits, and an expected outcome.
USER_SCENARIO = """
import signal
from storeharness.harness import Signal, after, returns, scenario

@scenario(world_size=8, faults=[Signal(signal.SIGINT, 3, after(3, "waiting"), blocked=True)],
          expect={3: returns("interrupted, then woke")})
def sigint_while_waiting(ctx):
    if ctx.rank == 3:
        signal.signal(signal.SIGINT, lambda *_: ctx.point("handled"))
        ctx.point("waiting")
        ctx.store.wait(["go"])
        return "interrupted, then woke"
    if ctx.rank == 0:
        ctx.wait_for(3, "handled")
        ctx.store.set("go", "1")
"""

BROKEN_SCENARIO = """
from storeharness.harness import returns, scenario

@scenario(world_size=3, expect={1: returns("one")})
def rank_one_lies(ctx):
    return "two" if ctx.rank == 1 else ctx.rank
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "scenario_sigint.py"
    path.write_text(USER_SCENARIO)
    return path


def test_the_cli_runs_a_user_file_on_every_backend_that_can_take_it(
    user_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, xml = tmp_path / "report.json", tmp_path / "junit.xml"
    code = main(["run", str(user_file), "-q", "--json", str(out), "--junit-xml", str(xml)])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = json.loads(out.read_text())
    # hash takes only thread ranks, and signals need processes: file, tcp and prefix remain.
    assert [r["store"] for r in rows] == ["file", "tcp", "prefix"]
    for row in rows:
        assert row["passed"] and len(row["ranks"]) == 8
        assert row["ranks"][3]["expected"] == "returns 'interrupted, then woke'"
        assert any("SIGINT sent to rank 3 while blocked" in e for e in row["events"])
    assert "3 passed, 0 failed" in text
    suite = ET.parse(xml).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("3", "0")


def test_pytest_collects_and_runs_the_same_file(user_file: Path) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(user_file), "-v", "-p", "no:cacheprovider",
         "--rootdir", str(user_file.parent), "-o", "addopts="],
        capture_output=True, text=True, env=env, cwd=user_file.parent, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for case in ("file-process-8", "tcp-process-8", "prefix-process-8"):
        assert f"sigint_while_waiting[{case}] PASSED" in proc.stdout


def test_a_failure_names_every_ranks_fate_and_how_to_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "scenario_broken.py"
    path.write_text(BROKEN_SCENARIO)
    xml = tmp_path / "junit.xml"
    assert main(["run", str(path), "--store", "file", "-q", "--junit-xml", str(xml)]) == 1
    text = capsys.readouterr().out
    assert "rank_one_lies  file       process      3  FAIL" in text
    assert "✓ rank 0: returned 0" in text and "✓ rank 2: returned 2" in text
    assert "✗ rank 1: returned 'two'" in text
    assert "expected to return 'one', but returned 'two'" in text
    assert f"replay: storeharness run {path} -k 'rank_one_lies' --store file" in text
    failure = ET.parse(xml).getroot().find("testcase/failure")
    assert failure is not None and "expected to return 'one'" in failure.get("message", "")


def test_exit_codes_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-k", "no_such_scenario", "-q"]) == 5
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "sigint_during_wait: SIGINT lands on rank 3" in listed
    assert "tcp-process-8" in listed
    with pytest.raises(SystemExit, match="not a valid expression"):
        main(["run", "-k", "and (", "-q"])
    with pytest.raises(SystemExit, match="no such scenario file"):
        main(["run", "/no/such/dir", "-q"])


def test_the_default_run_is_the_bundled_library_on_tcp(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "-k", "fixed_world_size and not non_fixed"]) == 0
    text = capsys.readouterr().out
    assert "fixed_world_size" in text and " tcp " in text and "4 passed, 0 failed" in text


def test_python_m_harness_is_the_same_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storeharness", "list", "--store", "file"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and "missing_clients" in proc.stdout, proc.stderr
