"""The remote launcher's pure parts: rebasing a history onto the controller's clock, and which
modules travel to a host as source."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from storeharness.harness._results import HostClock
from storeharness.harness.history._record import Recorder, read_file, rebase
from storeharness.stores import FileStore

from . import remote_ranks


def test_rebase_moves_every_time_and_widens_each_operation(tmp_path: Path) -> None:
    path = tmp_path / "rank-0.history"
    rec = Recorder(path, 0)
    first = rec.invoke(0, "set", ("k",), (b"v",))
    rec.complete(first, None)
    rec.invoke(0, "get", ("k",), ())  # never completed: unknown
    rec.close()
    before = read_file(path, 0)
    moved = tmp_path / "moved.history"
    moved.write_bytes(rebase(path.read_bytes(), shift_ns=1000, widen_ns=7))
    after = read_file(moved, 0)
    assert [op.name for op in after] == ["set", "get"]
    assert after[0].call == before[0].call - 1000 - 7
    assert after[0].ret == before[0].ret - 1000 + 7  # type: ignore[operator]
    assert after[1].ret is None and after[1].call == before[1].call - 1007


def test_a_host_clock_is_uncertain_by_half_a_round_trip_plus_its_drift() -> None:
    clock = HostClock("h1", offset=0.5, rtt=0.002, offset_end=0.501, rtt_end=0.004)
    assert clock.uncertainty == pytest.approx(0.002 + 0.001)


def test_only_modules_a_host_may_lack_travel_as_source() -> None:
    pytest.importorskip("execnet")
    from storeharness.harness.launch.remote import shipped_modules

    opener = functools.partial(FileStore, "/nonexistent")
    shipped = shipped_modules(remote_ranks.exchange, opener, json.dumps)
    assert [(name, path) for name, path, _ in shipped] == [
        (remote_ranks.__name__, remote_ranks.__file__)
    ]
    assert shipped[0][2] == Path(remote_ranks.__file__).read_text()


def test_a_shipped_module_imports_under_its_name_and_its_frames_show_its_lines() -> None:
    import linecache
    import sys
    import traceback

    from storeharness.harness.hosts._ranks import install_module

    name, path = "shipped_pkg_0f3a.scenario_x", "/nonexistent/shipped_pkg_0f3a/scenario_x.py"
    source = "def boom():\n    raise ValueError('from the host')  # THE LINE\n"
    try:
        install_module(name, path, source)  # a host without the file: the source travelled
        with pytest.raises(ValueError) as err:
            sys.modules[name].boom()
        text = "".join(traceback.format_exception(err.value))
        assert f'File "{path}", line 2, in boom' in text
        assert "# THE LINE" in text  # the line itself, from the source that travelled
        assert sys.modules["shipped_pkg_0f3a"].__path__ == ["/nonexistent/shipped_pkg_0f3a"]
    finally:
        for module in (name, "shipped_pkg_0f3a"):
            sys.modules.pop(module, None)
        linecache.cache.pop(path, None)
