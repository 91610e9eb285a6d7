"""The one stop ladder: ask, SIGTERM, SIGKILL, each followed by a bounded wait."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from storeharness.stores._process import Step, escalate, stop_process

# Each child says "ready" once its signal handling is in place, so the test never races it.
OBEYS_EOF = "import sys; print('ready', flush=True); sys.stdin.read()"
IGNORES_EOF = "import signal, sys; print('ready', flush=True); sys.stdin.read(); signal.pause()"
IGNORES_EVERYTHING = """
import signal, sys
log = open(sys.argv[1], "a", buffering=1)
signal.signal(signal.SIGTERM, lambda *_: log.write("SIGTERM\\n"))
print("ready", flush=True)
sys.stdin.read()
log.write("EOF\\n")
while True:
    signal.pause()
"""


def _start(code: str, *args: str, stdin: bool = True) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_child_that_exits_on_eof_stops_at_the_first_step() -> None:
    proc = _start(OBEYS_EOF)
    start = time.monotonic()
    assert stop_process(proc, timeout=30) == 0
    assert time.monotonic() - start < 10  # it did not sit out a step's wait
    assert proc.stdin is not None and proc.stdin.closed
    assert proc.stdout is not None and proc.stdout.closed


def test_a_child_that_ignores_eof_gets_sigterm() -> None:
    proc = _start(IGNORES_EOF)
    assert stop_process(proc, timeout=0.5) == -signal.SIGTERM


def test_a_child_that_ignores_eof_and_sigterm_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    proc = _start(IGNORES_EVERYTHING, str(log))
    assert stop_process(proc, timeout=1.0) == -signal.SIGKILL
    # It saw its stdin close and then SIGTERM, and ignored both, before SIGKILL.
    assert set(log.read_text().split()) == {"EOF", "SIGTERM"}


def test_a_child_without_a_stdin_pipe_goes_straight_to_sigterm() -> None:
    proc = _start("import signal; print('ready', flush=True); signal.pause()", stdin=False)
    start = time.monotonic()
    assert stop_process(proc, timeout=30) == -signal.SIGTERM
    assert time.monotonic() - start < 10  # no wait after a stdin it does not have


def test_a_child_already_gone_is_reaped_and_its_pipes_closed() -> None:
    proc = _start("print('ready', flush=True)")
    proc.wait(30)
    assert stop_process(proc) == 0
    assert proc.stdin is not None and proc.stdin.closed
    assert stop_process(proc) == 0  # idempotent


class _Fake:
    def __init__(self, name: str, dies_at: str) -> None:
        self.name, self.dies_at, self.alive = name, dies_at, True


def test_escalate_applies_steps_to_the_living_and_waits_only_for_whom_a_step_names() -> None:
    a, b, c = _Fake("a", "ask"), _Fake("b", "term"), _Fake("c", "never")
    log: list[tuple[str, list[str]]] = []

    def step(name: str, listening: bool = True) -> Step[_Fake]:
        def act(targets: list[_Fake]) -> Sequence[_Fake]:
            log.append((name, [t.name for t in targets]))
            for t in targets:
                if t.dies_at == name:
                    t.alive = False
            return [t for t in targets if listening or t.name == "a"]

        return Step(name, act, 1.0)

    waits: list[tuple[list[str], float]] = []
    left = escalate(
        [a, b, c],
        [step("ask", listening=False), step("term"), step("kill")],
        alive=lambda t: t.alive,
        wait=lambda ts, timeout: waits.append(([t.name for t in ts], timeout)),
    )
    assert log == [("ask", ["a", "b", "c"]), ("term", ["b", "c"]), ("kill", ["c"])]
    # After "ask" only "a" was named, and it had ended: nothing to wait for.
    assert waits == [(["c"], 1.0), (["c"], 1.0)]
    assert left == [c]


def test_escalate_stops_once_nobody_is_left() -> None:
    a = _Fake("a", "ask")
    calls: list[str] = []

    def act(targets: list[_Fake]) -> list[_Fake]:
        calls.append("act")
        a.alive = False
        return targets

    steps = [Step("ask", act, 1.0), Step("term", act, 1.0)]
    assert escalate([a], steps, alive=lambda t: t.alive, wait=lambda ts, t: None) == []
    assert calls == ["act"]
