"""Host-level fault records: checked early, with messages that say how to fix them."""

from __future__ import annotations

import pytest

from storeharness.harness import faults as F
from storeharness.harness._hostfaults import hosts_named, unknown_hosts

AT = F.after(1, "ready")


def test_good_host_faults_pass_the_check_and_describe_themselves() -> None:
    good: list[F.Fault] = [
        F.Partition([["h0"], ["h1", "h2"]], AT),
        F.Isolate("h1", AT),
        F.Loss(0.3, AT, between=("h0", "h1")),
        F.Rate(1_000_000, AT),
        F.Latency(0.05, AT, jitter=0.01, between=["h0", "h2"]),  # type: ignore[arg-type]
        F.HealNetwork(AT),
        F.KillHost("h2", AT),
        F.PauseHost("h1", AT),
        F.ResumeHost("h1", AT),
    ]
    assert F.check(good) == []
    assert [F.describe(f) for f in good] == [
        "Partition(h0 | h1,h2 when rank 1 at 'ready')",
        "Isolate(h1 when rank 1 at 'ready')",
        "Loss(0.3, h0↔h1 when rank 1 at 'ready')",
        "Rate(1000000 bit/s when rank 1 at 'ready')",
        "Latency(0.05 s ± 0.01, h0↔h2 when rank 1 at 'ready')",
        "HealNetwork(when rank 1 at 'ready')",
        "KillHost(h2 when rank 1 at 'ready')",
        "PauseHost(h1 when rank 1 at 'ready')",
        "ResumeHost(h1 when rank 1 at 'ready')",
    ]
    assert [str(f) for f in good[1:2] + good[6:]] == [
        "isolate h1 when rank 1 at 'ready'",
        "kill host h2 when rank 1 at 'ready'",
        "pause host h1 when rank 1 at 'ready'",
        "resume host h1 when rank 1 at 'ready'",
    ]
    # one host, one trigger, yet different faults: they never compare equal
    assert len({F.Isolate("h1", AT), F.PauseHost("h1", AT), F.ResumeHost("h1", AT)}) == 3
    # lists become tuples: records stay hashable and compare equal however they were written
    assert good[0] == F.Partition((("h0",), ("h1", "h2")), AT)
    assert len(set(good)) == len(good)


def test_host_faults_resolve_their_trigger_like_any_fault() -> None:
    plan = F.resolve([F.Isolate("h1", F.after(-1, "ready"))], 4, seed=0)
    assert plan == (F.Isolate("h1", F.after(3, "ready")),)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (F.Partition([["h0"]], AT), "groups must be two or more non-empty lists of host names"),
        (F.Partition([["h0"], []], AT), "groups must be two or more non-empty lists"),
        (F.Partition([["h0"], ["h1", "h0"]], AT),
         "host 'h0' is in groups 0 and 1; a host belongs to one side of a partition"),
        (F.Isolate("", AT), "host must be a host name such as 'h1', got ''"),
        (F.KillHost(3, AT), "host must be a host name such as 'h1', got 3"),  # type: ignore[arg-type]
        (F.Loss(0, AT), "p is a probability, 0 < p <= 1 (0.3 drops 30 %)"),
        (F.Loss(30, AT), "p is a probability, 0 < p <= 1"),
        (F.Loss(0.00001, AT), "p=1e-05 rounds to 0 at the rule's 0.0001 steps"),
        (F.Loss(0.3, AT, between=("h0",)),  # type: ignore[arg-type]
         "between must be two host names, between=('h0', 'h1'), or None"),
        (F.Loss(0.3, AT, between=("h0", "h0")), "between names 'h0' twice; name two different"),
        (F.Rate(1.5e6, AT), "bps is an integer number of bits per second >= 8"),  # type: ignore[arg-type]
        (F.Latency(0, AT), "seconds must be > 0"),
        (F.Latency(0.1, AT, jitter=-1), "jitter must be >= 0 seconds"),
        (F.Isolate("h0", "later"), "its trigger must be after(rank, 'point-name')"),  # type: ignore[arg-type]
    ],
)  # fmt: skip
def test_bad_host_faults_are_refused_saying_how_to_fix_them(fault: F.Fault, message: str) -> None:
    problems = F.check([fault])
    assert len(problems) == 1 and problems[0].startswith(repr(fault)), problems
    assert message in problems[0]


def test_host_names_are_checked_against_the_worlds_hosts() -> None:
    fault = F.Partition([["h0"], ["h1", "h9"]], AT)
    assert hosts_named(fault) == ("h0", "h1", "h9")
    assert unknown_hosts(fault, ["h0", "h1", "h2"]) == (
        "Partition(h0 | h1,h9 when rank 1 at 'ready') names host 'h9', which is not among the "
        "world's hosts (h0, h1, h2); use one of those names"
    )
    assert unknown_hosts(F.Loss(0.1, AT), ["h0"]) is None  # every pair: names no host


def _reaches_go(ctx: object) -> int:
    ctx.point("go")  # type: ignore[attr-defined]
    return 1


def test_a_world_on_no_hosts_reports_a_host_fault_as_never_fired() -> None:
    from storeharness.harness import run_world
    from storeharness.stores import HashStore

    store = HashStore()
    world = run_world(_reaches_go, 1, lambda: store, "thread",
                      faults=[F.Isolate("h1", F.after(0, "go"))])  # fmt: skip
    assert world.unfired() == [
        "fault Isolate(h1 when rank 0 at 'go') never fired; rank 0 reached 'go', but a host "
        "fault is applied by the hosts' agents, and this world ran on no hosts (if that can "
        "legitimately happen, give the fault optional=True)"
    ]
