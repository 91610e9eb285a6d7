"""torch's own stores as targets: the same scenarios, through stores.torch_adapter."""

from __future__ import annotations

import pytest

from storeharness.harness.run import load_package, run_case
from storeharness.harness.targets import torch_missing

pytestmark = pytest.mark.skipif(torch_missing() is not None, reason=str(torch_missing()))


@pytest.mark.parametrize("target", ["torch-tcp", "torch-file", "torch-hash"])
def test_the_library_runs_on_torchs_stores(target: str) -> None:
    library = {sc.name: sc for sc in load_package("storeharness.scenarios")}
    cases = [
        *library["fixed_world_size"].cases([target], world_sizes=[4]),
        *library["missing_clients"].cases([target], world_sizes=[2]),
    ]
    assert cases, f"no case of the library runs on {target}"
    for case in cases:
        result = run_case(case)
        assert result.passed, result.report()


@pytest.mark.parametrize("target", ["ours-on-torch", "ours-on-torch-legacy"])
def test_our_client_on_torchs_servers_keeps_a_timed_out_barrier_closed(target: str) -> None:
    # Found through --store tcp:// against torch's server: after its barrier timed out, our
    # client read the count with add(key, 0), and torch's server took that write as the cue to
    # release every other waiter, which then returned as if all had arrived.
    library = {sc.name: sc for sc in load_package("storeharness.scenarios")}
    cases = library["missing_clients"].cases([target], workers="process", world_sizes=[4])
    assert cases, f"no case of the library runs on {target}"
    for case in cases:
        result = run_case(case)
        assert result.passed, result.report()


def test_torchs_filestore_runs_a_signal_handler_only_after_wait_returns() -> None:
    # A finding of the sigint scenario (docs/differences.md): torch's FileStore.wait is a C++
    # loop that never lets Python run the handler, so the key is only set after the wait gave
    # up: rank 3's wait (SIGINT_WAIT, short so that the case fails quickly) times out.
    sc = {s.name: s for s in load_package("storeharness.scenarios")}["sigint_during_wait"]
    case = sc.cases(["torch-file"], world_sizes=[4])[0]
    result = run_case(case)
    assert not result.passed
    assert result.world is not None
    assert "StoreTimeout" in result.world[3].error
    assert "SIGINT sent to rank 3 while blocked" in "\n".join(map(str, result.world.events))


def test_torchs_known_failures_are_marked_so_the_library_stays_green() -> None:
    sc = {s.name: s for s in load_package("storeharness.scenarios")}["sigint_during_wait"]
    for case in sc.cases(["torch-tcp"], world_sizes=[4]):
        assert case.xfail is not None and "retries the interrupted" in case.xfail
        result = run_case(case)
        assert result.outcome == "xfail", result.report()
        assert result.ok
    ours = sc.cases(["tcp"], world_sizes=[4])[0]
    assert ours.xfail is None  # our stores are held to it
    # torch's v2 etcd store is Python (python-etcd over urllib3): the handler runs at once, so
    # a torch-* pattern that also caught it reported XPASS there.
    for target in ("torch-etcd", "ours-on-torch"):
        assert sc.xfail_for(target) is None, target
    for target in ("torch-tcp", "torch-client", "torch-file"):
        assert sc.xfail_for(target) is not None, target


def test_a_torch_tcp_barrier_that_times_out_stays_closed_for_the_others() -> None:
    # The intermittent missing_clients[torch-tcp-*-4]: after its barrier timed out, a rank
    # counted the arrivals with add(key, 0), which torch's server took as the cue to release
    # everyone still waiting.  Counting with get leaves them waiting out their own timeout.
    sc = {s.name: s for s in load_package("storeharness.scenarios")}["missing_clients"]
    for case in sc.cases(["torch-tcp"], workers="process", world_sizes=[4]):
        for _ in range(2):
            result = run_case(case)
            assert result.passed, result.report()
