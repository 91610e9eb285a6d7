"""The command line speaks pytest's conventions: exit codes, option names, interruptions."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from storeharness import __version__
from storeharness.harness import cli
from storeharness.harness.cli import main

from .procs import TAG, tagged

PASSES = """
from storeharness.harness import scenario

@scenario(world_size=2, workers="thread")
def {name}(ctx):
    return ctx.rank
"""

FAILS = """
from storeharness.harness import returns, scenario

@scenario(world_size=2, workers="thread", expect={{1: returns("one")}})
def {name}(ctx):
    return ctx.rank
"""


def _file(tmp_path: Path, name: str, text: str) -> str:
    """A scenario file of a name no other test uses (each is imported once per process)."""
    path = tmp_path / f"scenario_{name}.py"
    path.write_text(text.format(name=name))
    return str(path)


def test_exit_codes_zero_one_and_five(tmp_path: Path) -> None:
    assert main(["run", _file(tmp_path, "exits_zero", PASSES), "--store", "hash", "-q"]) == 0
    assert main(["run", _file(tmp_path, "exits_one", FAILS), "--store", "hash", "-q"]) == 1
    assert main(["run", "-k", "no_such_scenario", "-q"]) == 5
    assert main(["list", "-k", "no_such_scenario"]) == 5


SYNTAX_ERROR = """
from storeharness.harness import scenario

def broken(ctx:
    return 1
"""
RAISES_AT_IMPORT = """
import os

CONFIG = os.environ["NO_SUCH_SETTING_FOR_STOREHARNESS"]
"""
BAD_DEFINITION = """
from storeharness.harness import scenario

@scenario(world_size=0)
def empty(ctx):
    return 1
"""
IMPORTS_A_MISSING_MODULE = """
import no_such_helper_module
"""


@pytest.mark.parametrize(
    ("name", "text", "line", "error"),
    [
        ("syntax_error", SYNTAX_ERROR, 4, "SyntaxError: '(' was never closed"),
        ("raises_at_import", RAISES_AT_IMPORT, 4,
         "KeyError: 'NO_SUCH_SETTING_FOR_STOREHARNESS'"),
        ("bad_definition", BAD_DEFINITION, 4,
         "ScenarioError: scenario 'empty': world_size=0; every world size must be >= 1"),
        ("missing_import", IMPORTS_A_MISSING_MODULE, 2,
         "ModuleNotFoundError: No module named 'no_such_helper_module'"),
    ],
)  # fmt: skip
def test_a_load_error_is_one_located_line_and_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, line: int, error: str
) -> None:
    path = tmp_path / f"scenario_{name}.py"
    path.write_text(text)
    assert main(["run", str(path), "-q"]) == 4
    err = capsys.readouterr().err
    assert err == f"storeharness: error: {path}:{line}: {error}\n"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "-k", "a (b)"], "-k 'a (b)' is not a valid expression: at column 3"),
        (["run", "-k", "and ("], "expected a word, 'not' or '('; got 'and'"),
        (["run", "/no/such/dir"], "no such scenario file or directory: /no/such/dir"),
        (["run", "--store", "redis"], "unknown store 'redis'; choose from hash, file, tcp"),
        (["run", "--world-size", "0"], "--world-size must be >= 1, got 0"),
        (["run", "--bogus"], "unrecognized arguments: --bogus (see storeharness --help)"),
        (["run", "--workers", "fibers"], "invalid choice: 'fibers'"),
        (["lsit"], "unknown command 'lsit'; did you mean 'list'?"),
        (["rnu", "-k", "x"], "unknown command 'rnu'; did you mean 'run'?"),
        (["nonsense.py"], "'nonsense.py' is neither a command (run, list, hosts) nor an existing"),
    ],
)
def test_usage_errors_exit_four_saying_what_is_wrong(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 4
    captured = capsys.readouterr()
    assert says in captured.err and captured.err.startswith("storeharness: error: ")
    assert captured.out == ""  # nothing ran


def test_output_paths_are_checked_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    for args in (
        ["--json", str(not_a_dir / "out.json")],
        ["--junitxml", str(tmp_path)],
        ["--log-dir", str(not_a_dir)],
    ):
        assert main(["run", "-k", "fixed_world_size", *args]) == 4
        captured = capsys.readouterr()
        assert f"{args[0]} {args[1]}: cannot write there" in captured.err
        assert captured.out == ""
    # A missing directory is made, as pytest makes --junitxml's.
    deep = tmp_path / "reports" / "today" / "junit.xml"
    assert main(["run", _file(tmp_path, "made_dirs", PASSES), "--store", "hash", "-q",
                 "--junitxml", str(deep)]) == 0  # fmt: skip
    assert deep.is_file()


def test_an_internal_error_exits_three_with_its_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the runner")

    monkeypatch.setattr(cli, "run_case", broken)  # stands in for any bug in the harness
    assert main(["run", _file(tmp_path, "internal", PASSES), "--store", "hash"]) == 3
    err = capsys.readouterr().err
    assert "storeharness: INTERNAL ERROR" in err and "RuntimeError: a bug in the runner" in err


def test_option_names_as_pytest_spells_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, "spelled", PASSES)
    out = tmp_path / "out.json"
    assert main(["run", path, "--store", "hash", "-q", "--harness-seed", "5", "--json",
                 str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())[0]["seed"] == 5
    # The old spellings still work: --seed, --junit-xml.
    xml = tmp_path / "old.xml"
    assert main(["run", path, "--store", "hash", "-q", "--seed", "6", "--json", str(out),
                 "--junit-xml", str(xml)]) == 0  # fmt: skip
    assert json.loads(out.read_text())[0]["seed"] == 6 and xml.is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    usage = capsys.readouterr().out
    assert "--harness-seed N" in usage and "--junitxml FILE, --junit-xml FILE" in usage
    assert "--seed" not in usage.replace("--harness-seed", "")
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"storeharness {__version__}\n"


def test_a_path_selects_one_scenario_or_one_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, "selected", PASSES)
    _file(tmp_path, "selected_too", PASSES)  # a name containing the other
    assert main(["list", f"{path}::selected", "--store", "hash", "--store", "file"]) == 0
    listed = capsys.readouterr().out
    assert "hash-thread-2, file-thread-2" in listed and "selected_too" not in listed
    assert main(["list", f"{path}::selected[file-thread-2]", "--store", "hash", "--store",
                 "file"]) == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines()[1].strip() == "file-thread-2"
    # A path, as pytest takes it, is also the first word: "run" is implied.
    assert main([str(tmp_path), "-k", "selected_too", "--store", "hash", "-q"]) == 0


def test_a_scenario_file_imports_beside_it_or_from_its_package_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "suite" / "checks"
    package.mkdir(parents=True)
    for folder in (tmp_path / "suite", package):
        (folder / "__init__.py").write_text("")
    (package / "limits.py").write_text("WORLD = 2\n")
    (package / "scenario_packaged.py").write_text(
        "from storeharness.harness import scenario\n"
        "from suite.checks.limits import WORLD\n\n"
        "@scenario(world_size=WORLD, workers='thread')\n"
        "def packaged(ctx):\n    return ctx.rank\n"
    )
    xml = tmp_path / "junit.xml"
    assert main(["run", str(tmp_path / "suite"), "--store", "hash", "-q", "--junitxml",
                 str(xml)]) == 0  # fmt: skip
    case = ET.parse(xml).getroot().find("testcase")
    assert case is not None
    assert (case.get("classname"), case.get("name")) == (
        "suite.checks.scenario_packaged",
        "packaged[hash-thread-2]",
    )
    # The bundled library's classname is its module path too.
    assert main(["run", "-k", "fixed_world_size[hash-thread-2]", "-q", "--junitxml",
                 str(xml)]) == 0  # fmt: skip
    case = ET.parse(xml).getroot().find("testcase")
    assert case is not None and case.get("classname") == "storeharness.scenarios.basics"


# ---------------------------------------------------------------------- interruptions

INTERRUPTIBLE = """
import os
from storeharness.harness import scenario

@scenario(world_size=1, stores=["tcp"])
def quick(ctx):
    return 1

@scenario(world_size=2, stores=["tcp"], time_limit=600, op_timeout=600)
def blocks(ctx):
    if ctx.rank == 0:
        with open(os.environ["READY_FIFO"], "w") as ready:
            ready.write("ready\\n")
    ctx.store.wait(["never"])
"""


def _started_and_blocked(tmp_path: Path, tag: str) -> subprocess.Popen[str]:
    """``storeharness run`` with its second case's ranks blocked (they said so on a FIFO)."""
    (tmp_path / "scenario_interruptible.py").write_text(INTERRUPTIBLE)
    fifo, tmp = tmp_path / "ready", tmp_path / "tmp"
    os.mkfifo(fifo)
    tmp.mkdir()
    env = {**os.environ, "READY_FIFO": str(fifo), TAG: tag, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "storeharness", "run", "scenario_interruptible.py", "--json",
         "out.json", "--junitxml", "out.xml"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([reader], [], [], 1.0)[0]:  # bounded wait for the rank's word
                assert os.read(reader, 64) == b"ready\n"
                return proc
    finally:
        os.close(reader)
    proc.kill()
    raise AssertionError(f"the run never got to its blocking case: {proc.communicate()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_reports_what_finished_and_leaves_nothing_behind(
    tmp_path: Path, sig: signal.Signals
) -> None:
    tag = uuid.uuid4().hex
    proc = _started_and_blocked(tmp_path, tag)
    # It is all there: the store's server and two ranks beside the command, and its directory.
    assert len(set(tagged(tag)) - {proc.pid}) >= 3
    assert list((tmp_path / "tmp").glob("storeharness-*"))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert "PASSED  quick" in out and "blocks" not in out.split("interrupted")[0]
    why = "KeyboardInterrupt (Ctrl-C)" if sig is signal.SIGINT else "SIGTERM"
    assert f"interrupted by {why} after 1 of 2 cases" in out
    assert re.search(r" 1 passed(, \d+ skipped)? in ", out) and "(interrupted)" in out
    assert [row["id"] for row in json.loads((tmp_path / "out.json").read_text())] == [
        "quick[tcp-process-1]"
    ]
    assert ET.parse(tmp_path / "out.xml").getroot().get("tests") == "1"
    # The ranks, the store's server and the run's temporary directory are gone.
    assert tagged(tag) == []
    assert list((tmp_path / "tmp").iterdir()) == []


SIGTERM_FAULT = """
import signal
from storeharness.harness import Signal, after, killed, returns, scenario

@scenario(world_size=2, faults=[Signal(signal.SIGTERM, 1, after(1, "armed"))],
          expect={0: returns(True), 1: killed(signal.SIGTERM)})
def sigterm_kills_a_rank(ctx):
    if ctx.rank == 1:
        ctx.point("armed")
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
"""


def test_ranks_keep_the_default_sigterm_so_a_sigterm_fault_kills_as_under_pytest(
    tmp_path: Path,
) -> None:
    (tmp_path / "scenario_sigterm_fault.py").write_text(SIGTERM_FAULT)
    proc = subprocess.run(
        [sys.executable, "-m", "storeharness", "run", "scenario_sigterm_fault.py", "--store",
         "file"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
