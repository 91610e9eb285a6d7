"""storeharness run/list: the report a person reads, and a new user's file under both tools."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
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

# A scenario that imports a module beside it, whose assert fails on every rank but 0.
HELPERS = """
def check_seen(ctx, value):
    assert value == 0, f"rank {ctx.rank} saw {value}"
"""
HELPER_SCENARIO = """
import helpers
from storeharness.harness import scenario

@scenario(world_size=[2, 3])
def helper_asserts(ctx):
    ctx.log.info("rank %d checks what it saw", ctx.rank)
    helpers.check_seen(ctx, ctx.rank)
    return ctx.rank

@scenario(world_size=2)
def fine(ctx):
    return ctx.rank
"""

THREADS = """
from storeharness.harness import scenario

@scenario(world_size=2, workers="thread")
def threads_agree(ctx):
    return ctx.rank
"""


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``storeharness ARGS`` in ``cwd``, as a user runs it (stdout and stderr are pipes)."""
    return subprocess.run(
        [sys.executable, "-m", "storeharness", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env}, timeout=300,
    )  # fmt: skip


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "scenario_sigint.py"
    path.write_text(USER_SCENARIO)
    return path


def test_the_cli_runs_a_user_file_on_every_backend_that_can_take_it(
    user_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, xml = tmp_path / "report.json", tmp_path / "junit.xml"
    code = main(["run", str(user_file), "-q", "--json", str(out), "--junitxml", str(xml)])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = json.loads(out.read_text())
    # hash takes only thread ranks, and signals need processes: file, tcp and prefix remain.
    assert [r["store"] for r in rows] == ["file", "tcp", "prefix"]
    for row in rows:
        assert row["passed"] and len(row["ranks"]) == 8
        assert row["ranks"][3]["expected"] == "returns 'interrupted, then woke'"
        assert any("SIGINT sent to rank 3 while blocked" in e for e in row["events"])
    assert re.search(r"=+ 3 passed, 1 skipped in [\d.]+ s =+", text), text  # hash: skipped
    suite = ET.parse(xml).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("3", "0")
    # The classname is the file's module name, not an internal hashed one.
    assert {c.get("classname") for c in suite.iter("testcase")} == {"scenario_sigint"}


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


def test_a_failure_tells_each_ranks_story_once_and_replays_exactly(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text(HELPERS)
    (tmp_path / "scenario_helper.py").write_text(HELPER_SCENARIO)
    proc = cli(tmp_path, "run", "scenario_helper.py", "--store", "file", "--store", "tcp",
               "--json", "out.json", "--log-dir", "logs")  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    # One line per case as it finishes, and no second table repeating them.
    lines = [line for line in out.splitlines() if re.match(r"(PASSED|FAILED) ", line)]
    assert len(lines) == 6 and "scenario  store" not in out
    assert re.match(r"FAILED  helper_asserts  file  process  2 +[\d.]+ s$", lines[0]), lines
    assert re.match(r"PASSED  fine            tcp   process  2 +[\d.]+ s$", lines[-1]), lines
    # The four identical failures (two sizes, two stores) are told once.
    assert out.count("=== FAILURES ===") == 1 and out.count("_ helper_asserts[") == 1
    assert "_ helper_asserts[file-process-2] _" in out
    assert "the same failure in 3 more case(s): file-process-3, tcp-process-2, tcp-process-3" in out
    # Each rank against its expectation; where the helper raised; the frames; the log tail.
    assert "✓ rank 0: returned 0" in out
    assert "✗ rank 1: raised AssertionError: rank 1 saw 1  [expected: returns]" in out
    assert f"raised at {tmp_path}/helpers.py:3 in check_seen" in out
    assert (
        f"{tmp_path}/scenario_helper.py:8 in helper_asserts\n"
        "            helpers.check_seen(ctx, ctx.rank)\n"
        f"        {tmp_path}/helpers.py:3 in check_seen\n"
        '            assert value == 0, f"rank {ctx.rank} saw {value}"\n'
        "      AssertionError: rank 1 saw 1\n"
    ) in out
    assert re.search(r"\| .* rank 1 INFO rank 1 checks what it saw", out)
    assert "\x1b[" not in out  # piped: no colour
    assert re.search(r"=+ 2 passed, 4 failed in [\d.]+ s =+$", out.rstrip()), out[-300:]
    # --json: each rank's traceback and log tail; --log-dir: every rank's log, kept.
    rows = json.loads((tmp_path / "out.json").read_text())
    rank1 = rows[0]["ranks"][1]
    assert "helpers.py" in rank1["traceback"] and "checks what it saw" in rank1["log_tail"]
    assert rank1["raised"] == f"at {tmp_path}/helpers.py:3 in check_seen"
    kept = Path(rank1["log_file"])
    assert kept.parent == tmp_path / "logs" / "helper_asserts[file-process-2]"
    assert "checks what it saw" in kept.read_text()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir())[0] == "fine[file-process-2]"
    # The replay command runs exactly that case again.
    replay = next(line for line in out.splitlines() if "replay: " in line).split("replay: ")[1]
    assert replay.startswith(
        f"storeharness run '{tmp_path}/scenario_helper.py::helper_asserts[file-process-2]' "
        "--store file --harness-seed "
    )
    again = cli(tmp_path, *shlex.split(replay)[1:])
    assert again.returncode == 1
    assert [line for line in again.stdout.splitlines() if line.startswith("FAILED ")] == [
        next(line for line in again.stdout.splitlines() if line.startswith("FAILED "))
    ]
    assert "1 failed in" in again.stdout


def test_colour_on_a_terminal_none_when_piped_or_with_no_color(tmp_path: Path) -> None:
    (tmp_path / "scenario_threads.py").write_text(THREADS)
    args = [sys.executable, "-m", "storeharness", "run", "scenario_threads.py", "--store", "hash"]

    def on_a_terminal(**env: str) -> str:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            args, stdout=follower, stderr=subprocess.PIPE, cwd=tmp_path,
            env={**os.environ, "TERM": "xterm", **env},
        )  # fmt: skip
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side closed (the process is done)
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        assert proc.wait(120) == 0
        return b"".join(chunks).decode()

    coloured = on_a_terminal()
    assert "\x1b[32mPASSED" in coloured and "\x1b[32;1m" in coloured  # the line, the summary
    assert "\x1b[" not in on_a_terminal(NO_COLOR="1")
    piped = cli(tmp_path, "run", "scenario_threads.py", "--store", "hash")
    assert piped.returncode == 0 and "PASSED" in piped.stdout and "\x1b[" not in piped.stdout
    forced = cli(tmp_path, "run", "scenario_threads.py", "--store", "hash", "--color", "yes")
    assert "\x1b[32mPASSED" in forced.stdout


def test_the_default_stores_are_the_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "-k", "fixed_world_size and not non_fixed"]) == 0
    listed = capsys.readouterr().out
    assert "fixed_world_size: N ranks rendezvous" in listed
    for case in ("hash-thread-2", "file-process-2", "tcp-process-8", "prefix-thread-8"):
        assert case in listed


def test_store_all_without_torch_says_what_it_skips_and_why(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None  # as if torch were not installed\n"
        "from storeharness.harness.cli import main\n"
        "raise SystemExit(main(['list', '--store', 'all', '-k', 'missing_clients']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for target in ("torch-tcp", "torch-file", "torch-hash", "torch-client", "ours-on-torch"):
        assert f"--store all skips {target}: torch is not installed" in proc.stderr
    assert "tcp-pure-process-4" in proc.stdout and "torch-" not in proc.stdout


def test_under_pytest_a_failures_replay_hint_is_its_node_id(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text(HELPERS)
    (tmp_path / "scenario_helper.py").write_text(HELPER_SCENARIO)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "scenario_helper.py", "--store", "file", "-k",
         "helper_asserts and 2", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-o", "addopts="],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "raised at" in proc.stdout and "helpers.py:3 in check_seen" in proc.stdout
    assert re.search(
        r"replay: pytest 'scenario_helper.py::helper_asserts\[file-process-2\]' "
        r"--harness-seed \d+",
        proc.stdout,
    ), proc.stdout


def test_python_m_storeharness_is_the_same_command(tmp_path: Path) -> None:
    proc = cli(tmp_path, "list", "--store", "file")
    assert proc.returncode == 0 and "missing_clients" in proc.stdout, proc.stderr
