"""EtcdStore beyond the shared contract: its client boundary, leases, retries, fork, closing.

The contract itself runs in test_conformance.py and test_stateful.py (target ``etcd``).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from storeharness.harness._parties import process_parties
from storeharness.harness.targets._etcd_server import EtcdCluster
from storeharness.stores import (
    StoreBroken,
    StoreClosed,
    StoreTimeout,
    StoreValueError,
)
from storeharness.stores.etcd import EtcdStore, parse_endpoints
from storeharness.stores.etcd._transport import Transient

from . import etcd_support


@pytest.fixture
def cluster() -> EtcdCluster:
    return etcd_support.cluster()


@pytest.fixture
def store(cluster: EtcdCluster) -> Iterator[EtcdStore]:
    yield from etcd_support.store(cluster)


def _peer(store: EtcdStore, **kw: Any) -> EtcdStore:
    return EtcdStore(store.endpoints, prefix=store.prefix, timeout=10, **kw)


# ----------------------------------------------------------------- the client boundary


def test_importing_stores_loads_no_etcd_client() -> None:
    code = "import sys, storeharness.stores; print(sorted({'pyetcd', 'grpc'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_without_the_client_the_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['pyetcd'] = None\n"
        "from storeharness.stores import EtcdStore\n"
        "try:\n    EtcdStore('127.0.0.1:2379')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("StoreError"), out.stdout + out.stderr
    assert "pip install 'storeharness[etcd]'" in out.stdout


@pytest.mark.parametrize(
    ("given", "message"),
    [("nohost", "'nohost' is not host:port"), ("h:99999", "out of range"), ("", "at least one")],
)
def test_bad_endpoints_are_named(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoints(given)


def test_endpoints_in_every_spelling() -> None:
    want = [("127.0.0.1", 1), ("::1", 2)]
    assert parse_endpoints("127.0.0.1:1,[::1]:2") == want
    assert parse_endpoints(["http://127.0.0.1:1", ("::1", 2)]) == want


def test_no_cluster_is_a_network_error_naming_the_endpoints_within_the_timeout() -> None:
    with socket.socket() as holder:  # bound, never listening: connections are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(StoreBroken, match=rf"127\.0\.0\.1:{port}.*quorum") as err:
            EtcdStore(f"127.0.0.1:{port}", prefix="nobody", timeout=1.0, rpc_timeout=0.3)
        spent = time.monotonic() - start
    assert isinstance(err.value, ConnectionError)
    # the deadline, plus at most one back-off step (0.2 s) and a loaded machine's scheduling
    assert spent < 3.0, f"gave up after {spent:.2f} s, timeout 1 s"


# ----------------------------------------------------------------- operations


def test_a_value_etcd_refuses_is_a_value_error_and_the_store_goes_on(store: EtcdStore) -> None:
    with pytest.raises(StoreValueError, match="too large"):
        store.set("big", b"x" * 2_000_000)
    store.set("small", "ok")
    assert store.get("small") == b"ok"


def test_many_keys_span_several_txns_and_pages(store: EtcdStore) -> None:
    names = [f"k{i}" for i in range(1100)]
    store.multi_set([*names, "k0"], [*names, "last"])  # a repeated key: the last value wins
    assert store.num_keys() == 1100
    assert sorted(store.list_keys()) == sorted(names)
    got = store.multi_get(names)
    assert got[0] == b"last" and got[1:] == [n.encode() for n in names[1:]]
    assert store.check(names)
    store.wait(names, 5)


#: The requests that change something (whichever of them an operation uses).
WRITES = ("Put", "Txn", "DeleteRange")


@contextlib.contextmanager
def losing_replies(store: EtcdStore, methods: tuple[str, ...] = WRITES) -> Iterator[LostReplies]:
    """``store`` with its next write's reply lost; its own transport restored afterwards.

    A write first, so that this thread's marker exists and the next write is one request.
    """
    store.set("warm-up", "")
    inner = store._t
    lossy = LostReplies(inner, methods)
    store._t = lossy  # type: ignore[assignment]
    try:
        yield lossy
    finally:
        store._t = inner
    assert lossy.lose == 0, "no reply was lost: the test did not test the retry"


class LostReplies:
    """A transport whose first reply to one of ``methods`` is lost after etcd applied it.

    The request reaches etcd and commits; then the caller gets what the real transport raises
    when the connection breaks before the reply arrives (:class:`Transient`), and resends.
    """

    def __init__(self, inner: Any, methods: tuple[str, ...], lose: int = 1) -> None:
        self._inner, self._methods, self.lose = inner, methods, lose
        #: Run after a reply is lost, before the retry (what another client does meanwhile).
        self.meanwhile: Callable[[], object] = lambda: None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def call(self, service: str, method: str, request: Any, deadline: Any, *more: Any) -> Any:
        reply = self._inner.call(service, method, request, deadline, *more)
        if method in self._methods and self.lose > 0:
            self.lose -= 1
            self.meanwhile()
            raise Transient(f"{self._inner.label}: connection reset after etcd applied (test)")
        return reply


def test_a_retried_add_after_a_lost_reply_applies_once(store: EtcdStore) -> None:
    store.add("n", 5)
    with losing_replies(store):
        assert store.add("n", 1) == 6
    with _peer(store) as peer:
        assert peer.add("n", 0) == 6


def test_a_retried_pop_after_a_lost_reply_returns_that_item(store: EtcdStore) -> None:
    for item in ("a", "b"):
        store.queue_push("q", item)
    with losing_replies(store):
        assert store.queue_pop("q") == b"a"
    assert store.queue_pop("q") == b"b"
    assert store.queue_len("q") == 0


def test_a_retried_push_is_not_pushed_again_after_a_consumer_took_it(store: EtcdStore) -> None:
    # Found by the leader-kill test (an item delivered twice, another left behind): the push
    # applied, its reply was lost, a consumer popped the item, and the retry, seeing the item's
    # key absent, pushed it again.
    store.queue_push("q", "warm")  # this thread's marker exists from here on
    assert store.queue_pop("q") == b"warm"
    with _peer(store) as peer:
        taken: list[bytes] = []
        with losing_replies(store) as lossy:
            lossy.meanwhile = lambda: taken.append(peer.queue_pop("q", block=False))
            store.queue_push("q", "once")
        assert taken == [b"once"]
        assert peer.queue_len("q") == 0


def test_a_retried_append_after_a_lost_reply_appends_once(store: EtcdStore) -> None:
    store.append("s", "ab")
    with losing_replies(store):
        store.append("s", "cd")
    assert store.get("s") == b"abcd"


def test_a_retried_compare_set_that_wrote_says_so_though_the_value_moved_on(
    store: EtcdStore,
) -> None:
    # The first attempt wrote "mine"; before the resend looked, another client replaced it.
    # The resend must not report the other client's value ("not written").
    store.set("lock", "free")
    with _peer(store) as peer, losing_replies(store) as lossy:
        lossy.meanwhile = lambda: peer.compare_set("lock", "mine", "theirs")
        assert store.compare_set("lock", "free", "mine") == b"mine"
    assert store.get("lock") == b"theirs"


def test_a_retried_compare_set_does_not_create_a_key_again_after_it_was_deleted(
    store: EtcdStore,
) -> None:
    # "absent or empty" (expected ""): the first attempt created the key, another client
    # deleted it, and a resend that evaluated afresh would create it a second time.
    with _peer(store) as peer, losing_replies(store) as lossy:
        lossy.meanwhile = lambda: peer.delete_key("once")
        assert store.compare_set("once", "", "created") == b"created"
        assert not peer.check(["once"]), "the resend created the key again"


def test_a_retried_set_does_not_write_over_a_later_write(store: EtcdStore) -> None:
    # Another client saw our value, then replaced it: a resend must not bring ours back.
    seen: list[bytes] = []
    with _peer(store) as peer:

        def read_then_replace() -> None:
            seen.append(peer.get("k"))
            peer.set("k", "theirs")

        writes: list[tuple[str, Callable[[], object]]] = [
            ("set", lambda: store.set("k", "ours")),
            ("multi_set", lambda: store.multi_set(["k", "other"], ["ours", "x"])),
        ]
        for name, write in writes:
            with losing_replies(store) as lossy:
                lossy.meanwhile = read_then_replace
                write()
            assert seen[-1] == b"ours", name
            assert peer.get("k") == b"theirs", f"a resent {name} wrote over a later write"


def test_a_retried_delete_says_it_deleted_and_spares_a_key_set_again(store: EtcdStore) -> None:
    store.set("k", "v")
    with _peer(store) as peer, losing_replies(store) as lossy:
        lossy.meanwhile = lambda: peer.set("k", "set again after the delete")
        assert store.delete_key("k") is True
    assert store.check(["k"]), "the resent delete removed the key set again"
    assert store.get("k") == b"set again after the delete"
    with losing_replies(store):
        assert store.delete_key("k") is True
    with losing_replies(store):
        assert store.delete_key("k") is False  # nothing there: the resend says so too


def _child_adds(opener: Any, rank: int, store: EtcdStore) -> int:
    return store.add("n", 1)


def test_forked_children_write_through_an_inherited_handle_as_writers_of_their_own(
    store: EtcdStore,
) -> None:
    # A child continues its parent's operation numbers: under the parent's client id its adds
    # looked "already applied" to each other and to the parent, and went missing.
    assert store.add("n", 1) == 1
    assert sorted(process_parties(_child_adds, 2, (None, store))) == [2, 3]
    assert store.add("n", 1) == 4


# ----------------------------------------------------------------- leases


def test_run_keys_live_while_a_participant_does_and_vanish_after(cluster: EtcdCluster) -> None:
    import pyetcd

    prefix = f"test/{uuid.uuid4().hex}"
    first = EtcdStore(cluster.endpoints, prefix=prefix, timeout=10, lease_ttl=1)
    first.set("k", "v")
    second = EtcdStore(cluster.endpoints, prefix=prefix, timeout=10, lease_ttl=1)
    first.close()
    host, port = cluster.members[0].endpoint.split(":")
    raw = pyetcd.client(host=host, port=int(port))
    try:
        key = f"{prefix}/k/k".encode()
        # The lease's TTL is 1 s: 2.5 s without a DELETE shows the survivor's keep-alive works.
        deleted = raw.watch_once(key, timeout=2.5, filters=[raw_filter("NOPUT")])
    except Exception as exc:  # pyetcd raises WatchTimedOut when nothing came
        assert type(exc).__name__ == "WatchTimedOut", exc
    else:
        pytest.fail(f"the key was deleted while a participant lived: {deleted}")
    try:
        assert second.get("k") == b"v"
        second.close()
        event = raw.watch_once(key, timeout=10, filters=[raw_filter("NOPUT")])
        assert type(event).__name__ == "DeleteEvent"
        assert raw.get(key)[0] is None
    finally:
        raw.close()


def raw_filter(name: str) -> Any:
    from pyetcd import etcdrpc

    return getattr(etcdrpc.WatchCreateRequest, name)


# ----------------------------------------------------------------- blocking, closing, fork


def test_closing_wakes_a_blocked_wait_with_store_closed(store: EtcdStore) -> None:
    waiter = _peer(store)
    errors: list[BaseException] = []

    def block() -> None:
        try:
            waiter.wait(["never"], 30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=block)
    thread.start()
    deadline = time.monotonic() + 10
    while not waiter._sleepers and time.monotonic() < deadline:  # blocked in its watch
        time.sleep(0.005)
    assert waiter._sleepers, "the wait never blocked"
    waiter.close()
    thread.join(5)
    assert not thread.is_alive()
    assert [type(e) for e in errors] == [StoreClosed]


def test_a_wait_times_out_naming_the_missing_key(store: EtcdStore) -> None:
    store.set("there", "1")
    with pytest.raises(StoreTimeout, match=r"\['absent'\]"):
        store.wait(["there", "absent"], 0.2)


def test_a_deadline_spent_before_etcd_answers_is_a_timeout_not_a_broken_cluster(
    store: EtcdStore,
) -> None:
    # A timeout so short that it passes before the first request: the cluster is healthy, so
    # this is a StoreTimeout with the configured limit (it was StoreBroken, "is the cluster
    # running?", about 1 run in 40 of torch's queues_timeout case at 10 ms).
    store.set_timeout(timedelta(microseconds=1))
    calls: dict[str, Callable[[], object]] = {
        "queue_pop": lambda: store.queue_pop("empty"),
        "get": lambda: store.get("absent"),
        "set": lambda: store.set("k", "v"),
    }
    for op, call in calls.items():
        with pytest.raises(StoreTimeout) as info:
            call()
        assert info.value.op == op and info.value.timeout == 1e-6, info.value
    with pytest.raises(StoreTimeout) as info:
        store.wait(["absent"], timedelta(microseconds=2))
    assert info.value.timeout == 2e-6, info.value
    store.set_timeout(timedelta(seconds=10))  # the fixture's teardown removes the run's keys


def _child_uses_inherited(opener: Any, rank: int, store: EtcdStore) -> bytes:
    store.set(f"from-{rank}", "x")
    return store.get("parent")


def test_a_handle_inherited_through_fork_opens_its_own_channel(store: EtcdStore) -> None:
    store.set("parent", "p")
    assert process_parties(_child_uses_inherited, 2, (None, store)) == [b"p", b"p"]
    assert store.multi_get(["from-0", "from-1"]) == [b"x", b"x"]


def test_a_blocked_pop_whose_watch_breaks_looks_again_before_watching(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storeharness.stores.etcd import _watch

    popper = _peer(store)
    popper.set_timeout(3)
    original = _watch.Watch.next
    broke: list[bool] = []

    def break_once(self: _watch.Watch, deadline: float | None) -> Any:
        if broke:
            return original(self, deadline)
        broke.append(True)
        self.stop()  # the stream is gone: this push reaches no watch, only a fresh look
        store.queue_push("q", "pushed while the watch was down")
        return Transient("stream broke (test)")

    monkeypatch.setattr(_watch.Watch, "next", break_once)
    assert popper.queue_pop("q") == b"pushed while the watch was down"
    assert broke == [True]
    popper.close()


_CONTROLLER = """
import sys
from storeharness import scenario
from storeharness.harness.run import run_case

@scenario(world_size=2, workers="process", name="count")
def count(ctx):
    return ctx.store.add("n", 1)

(case,) = count.cases(["etcd"])
result = run_case(case)
assert result.passed, result.problems or result.error
print("grpc" in sys.modules)
"""


def test_the_controller_never_loads_grpc_so_forking_ranks_is_safe(cluster: EtcdCluster) -> None:
    # A process that has loaded gRPC cannot safely fork: a rank forked while a gRPC thread of
    # the controller held a lock hung in gRPC's fork hook, deaf to SIGTERM.  The controller
    # marks and clears a run through etcd's JSON gateway instead; the ranks load gRPC.
    out = subprocess.run(
        [sys.executable, "-c", _CONTROLLER], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", out.stdout


class NoAnswerInTime:
    """A transport whose next ``fail`` RPCs get no answer within their cap (as a reply too
    large for a slow link would): each records the limit it was given, then fails."""

    def __init__(self, inner: Any, fail: int) -> None:
        self._inner, self.fail = inner, fail
        self.limits: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def call(self, service: str, method: str, request: Any, deadline: Any, *more: Any) -> Any:
        if self.fail > 0:
            self.fail -= 1
            self.limits.append(self._inner.time_limit(deadline, *more)[0])
            raise Transient(f"{self._inner.label}: no answer within the cap (test)")
        return self._inner.call(service, method, request, deadline, *more)


def test_each_retry_of_an_rpc_without_an_answer_in_time_waits_twice_as_long(
    cluster: EtcdCluster,
) -> None:
    # rpc_timeout 0.05 s: the caps of four attempts are 0.05, 0.1, 0.2, 0.4 s, then it answers
    store = EtcdStore(cluster.endpoints, prefix=f"test/{uuid.uuid4().hex}", timeout=10,
                      rpc_timeout=0.05)  # fmt: skip
    try:
        store.set("k", "v")
        inner = store._t
        slow = NoAnswerInTime(inner, fail=4)
        store._t = slow  # type: ignore[assignment]
        try:
            assert store.get("k") == b"v"
        finally:
            store._t = inner
        assert [round(x / 0.05) for x in slow.limits] == [1, 2, 4, 8], slow.limits
    finally:
        store.destroy()
