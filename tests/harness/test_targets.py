"""The target registry: one place that chooses, open to a user's store and a running server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storeharness.harness import (
    Fate,
    KillServer,
    RankContext,
    after,
    returns,
    run_world,
    scenario,
    targets,
)
from storeharness.harness.run import load_package, run_case
from storeharness.stores import Capability
from storeharness.stores.conformance import check_store
from storeharness.stores.tcp import ServerProcess, bind_listener

SQLITE = Path(__file__).resolve().parents[2] / "examples" / "sqlite_store"

MEMORY_STORE = '''
from pathlib import Path
from storeharness.stores import HashStore

class Memory(HashStore):
    """In memory: not cross-process, so thread ranks sharing the runner's store via clone()."""
    def __init__(self, workdir: Path) -> None:
        super().__init__()

def no_annotation(workdir):
    return Memory(workdir)
no_annotation.capabilities = {"queues"}
'''


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The SQLite example and an in-memory store, importable as a user's own modules."""
    for name in ("sqlitestore.py",):
        (tmp_path / name).write_text((SQLITE / name).read_text())
    (tmp_path / "memstore.py").write_text(MEMORY_STORE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_every_builtin_name_resolves_and_unknown_names_say_what_to_do() -> None:
    for name in targets.names():
        assert targets.get(name).spec.name == name
    with pytest.raises(ValueError, match=r"unknown store 'redis'.*module\.path:factory"):
        targets.get("redis")
    names, skipped = targets.expand(["all"])
    assert set(targets.DEFAULT) <= set(names)
    assert all(": " in why for why in skipped)  # each skipped target says why


def test_a_store_class_is_a_target_with_what_it_declares(user_modules: Path) -> None:
    target = targets.get("sqlitestore:SQLiteStore")
    assert target.spec.kind == "user"
    assert target.spec.workers == ("process", "thread")  # it declares cross_process
    assert target.spec.capabilities == {Capability.CROSS_PROCESS, Capability.ADD_ERRORS}
    # a factory function's return annotation names the class
    assert targets.get("sqlitestore:make").spec.capabilities == target.spec.capabilities
    memory = targets.get("memstore:Memory")
    assert memory.spec.workers == ("thread",)
    assert targets.get("memstore:no_annotation").spec.capabilities == {Capability.QUEUES}


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nosuchmodule:make", "cannot import module 'nosuchmodule'"),
        ("sqlitestore:nothing", "has no attribute 'nothing'"),
        ("notastore:THREE", "THREE is not callable"),
        ("notastore:Wrong", "process ranks need a store that declares the cross_process"),
        ("notastore", r"unknown store .notastore.*module\.path:factory"),
    ],
)
def test_a_bad_user_store_is_refused_naming_what_is_wrong(
    user_modules: Path, ref: str, message: str
) -> None:
    (user_modules / "notastore.py").write_text(
        "def Wrong(workdir): ...\nWrong.workers = ('process',)\nTHREE = 3\n"
    )
    with pytest.raises(ValueError, match=message):
        targets.get(ref)


def test_the_library_runs_on_a_users_stores(user_modules: Path, tmp_path: Path) -> None:
    library = {sc.name: sc for sc in load_package("storeharness.scenarios")}
    for ref, workers in (("sqlitestore:SQLiteStore", "process"), ("memstore:Memory", "thread")):
        cases = library["fixed_world_size"].cases([ref], workers=workers, world_sizes=[4])
        assert len(cases) == 1, ref
        result = run_case(cases[0], tmp_root=str(tmp_path))
        assert result.passed, result.report()
    # what it cannot take is skipped with the reason
    sigint = library["sigint_during_wait"]
    assert sigint.cases(["memstore:Memory"]) == []
    assert "cannot be shared by process ranks" in str(
        sigint.why_not(targets.get("memstore:Memory").spec, "process")
    )


def test_conformance_takes_the_same_target(user_modules: Path, tmp_path: Path) -> None:
    backend = targets.get("sqlitestore:SQLiteStore").backend(tmp_path / "conf")
    outcomes = {o.case: o for o in check_store(backend)}
    failed = {name: o.detail for name, o in outcomes.items() if o.status == "failed"}
    assert not failed  # the example store keeps the whole contract it declares
    skipped = {name for name, o in outcomes.items() if o.status == "skipped"}
    assert skipped == {"list_keys", "queues", "queue_nonblocking", "queues_bidirectional",
                       "queue_each_item_once"}  # fmt: skip
    assert outcomes["clone_shares_data"].status == "passed"


def _count(ctx: RankContext) -> int:
    ctx.store.add("n", 1)
    ctx.store.barrier("all", 3, timeout=10)
    return ctx.store.add("n", 0)


def test_a_running_server_is_a_target_and_runs_keep_to_their_namespaces(tmp_path: Path) -> None:
    server = ServerProcess(bind_listener(0))
    try:
        target = targets.get(f"tcp://127.0.0.1:{server.port}")
        assert target.spec.kind == "remote" and not target.spec.server
        with (
            target.start(tmp_path / "a", timeout=10) as one,
            target.start(tmp_path / "b", timeout=10) as two,
        ):
            assert one.namespace != two.namespace
            for endpoint in (one, two):
                result = run_world(_count, 3, endpoint.opener(), "process", controls=endpoint)
                assert [r.fate for r in result] == [Fate.RETURNED] * 3
                assert result.values() == [3, 3, 3]  # each run counted only its own ranks
            with pytest.raises(ValueError, match="no server to kill"):
                one.kill_server()
        kill = {sc.name: sc for sc in load_package("storeharness.scenarios")}
        assert "fixed_world_size" in kill
    finally:
        server.stop()
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        targets.get("tcp://nohost")


def test_an_entry_point_registers_a_named_target(tmp_path: Path) -> None:
    dist = tmp_path / "mystore-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mystore\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[storeharness.targets]\nsqlite = sqlitestore:SQLiteStore\nbroken = nosuch:thing\n"
    )
    (tmp_path / "sqlitestore.py").write_text((SQLITE / "sqlitestore.py").read_text())
    code = textwrap.dedent(
        """
        from storeharness.harness import targets
        assert "sqlite" in targets.names(), targets.names()
        spec = targets.get("sqlite").spec
        print(spec.kind, spec.workers)
        try:
            targets.get("broken")
        except ValueError as exc:
            print(exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "user ('process', 'thread')" in proc.stdout
    assert "store 'broken' (entry point nosuch:thing" in proc.stdout


@pytest.mark.parametrize("server", ["ours", "torch"])
def test_the_library_runs_against_a_server_started_by_hand(server: str, tmp_path: Path) -> None:
    if server == "torch" and (why := targets.torch_missing()):
        pytest.skip(why)
    from storeharness.harness.targets.torch import TorchServer

    running = ServerProcess(bind_listener(0)) if server == "ours" else TorchServer(bind_listener(0))
    try:
        url = f"tcp://127.0.0.1:{running.port}"
        library = {sc.name: sc for sc in load_package("storeharness.scenarios")}
        cases = [
            case
            for name in ("fixed_world_size", "missing_clients", "leader_election")
            for case in library[name].cases([url], workers="process")
        ]
        assert len(cases) >= 5
        for case in cases:
            result = run_case(case, tmp_root=str(tmp_path))
            assert result.passed, result.report()
        # a server fault cannot apply to a server the harness does not own: skipped, with why
        assert _kills_the_server.cases([url]) == []
        why = _kills_the_server.why_not(targets.get(url).spec)
        assert why == f"the server at {url} is not the harness's to kill or restart"
    finally:
        running.stop()


@scenario(world_size=2, faults=[KillServer(after(0, "now"))], expect={"*": returns()})
def _kills_the_server(ctx: RankContext) -> None:
    ctx.point("now")


def test_a_server_that_is_not_there_is_refused_up_front(tmp_path: Path) -> None:
    listener = bind_listener(0, host="127.0.0.1")
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now (the port may be reused; that only helps)
    why = targets.get(f"tcp://127.0.0.1:{port}").unavailable()
    assert why is not None and "start it first" in why
    proc = subprocess.run(
        [sys.executable, "-m", "storeharness", "run", "--store", f"tcp://127.0.0.1:{port}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 4 and "cannot connect to the TCPStore server" in proc.stderr


def test_the_cli_says_why_a_scenario_skips_a_store(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storeharness", "run", "-k", "sigint", "--store", "hash",
         "--store", "file"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sigint_during_wait skipped on hash: hash cannot be shared by process ranks" in (
        proc.stderr
    )
    # ...and counts each store a scenario left out as pytest counts its skipped item
    ran = proc.stdout.count("PASSED")
    assert ran > 0 and f" {ran} passed, 1 skipped in " in proc.stdout, proc.stdout
