"""pytest-timeout as a backstop: when it fires mid-world, no rank or server survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .procs import TAG, tagged

HANGS = """
def test_hangs(world):
    world(lambda ctx: ctx.store.wait(["never"], 0), 3, workers="process", time_limit=600)
"""


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_nothing_survives_pytest_timeout(tmp_path: Path, method: str) -> None:
    (tmp_path / "test_hangs.py").write_text(HANGS)
    tag = uuid.uuid4().hex
    out = tmp_path / "out.txt"
    with out.open("w") as sink:  # a file, not a pipe: a surviving rank must not hang us
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
             "--rootdir", str(tmp_path), "--store", "tcp", "--timeout", "2",
             "--timeout-method", method, str(tmp_path / "test_hangs.py")],
            stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path, timeout=120,
            env={**os.environ, TAG: tag},
        )  # fmt: skip
    assert proc.returncode != 0 and "Timeout" in out.read_text()
    # With the thread method pytest os._exit()s: ranks die by PR_SET_PDEATHSIG and the server
    # when its stdin closes, which takes the kernel a moment; give it a bounded one.
    end = time.monotonic() + 10
    while tagged(tag) and time.monotonic() < end:
        time.sleep(0.05)  # waiting for processes we do not own to be reaped by init
    left = tagged(tag)
    for pid in left:  # do not leave them running even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], "a rank or server outlived pytest-timeout"
