"""Under pytest-xdist the scenario suite is as reliable as a serial run, and leaves nothing.

Each run is a fresh ``pytest -n 2`` in a subprocess, tagged through its environment, so any
process it leaves (rank, server, proxy) can be found afterwards wherever it was reparented.
``STOREHARNESS_XDIST_RUNS`` sets how many runs (2 by default; the closing note reports 20).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .procs import TAG, tagged

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("STOREHARNESS_XDIST_RUNS", "2"))


@pytest.mark.parametrize("run", range(RUNS))
def test_the_scenario_suite_under_xdist(run: int, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG: tag, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider",
         "scenarios", "tests/harness/test_world.py", "tests/harness/test_faults.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (\w+)", summary))
    assert counts.get("passed", 0) >= 70 and not counts.get("failed") and not counts.get("error")
    assert tagged(tag) == [], "processes of the run outlived it"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("storeharness-")]
    assert leftovers == [], f"temporary files left: {leftovers}"
