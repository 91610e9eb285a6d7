"""The rank↔runner messages and the event record: frozen, typed, and they travel."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import multiprocess
import pytest

from storeharness.harness import Event, EventKind
from storeharness.harness._messages import (
    AtPoint,
    AwaitPoint,
    Finished,
    Go,
    Never,
    PipeFd,
    Reached,
    Stop,
)
from storeharness.stores import StoreTimeout

MESSAGES: list[Any] = [
    PipeFd(7),
    AtPoint("waiting"),
    AwaitPoint(3, "handled"),
    Finished(True, {"value": [1, 2]}, None, "", "", 0.25),
    Finished(False, None, KeyError("k"), "KeyError: 'k'", "Traceback ...", 1.5),
    Finished(False, None, StoreTimeout("wait", ["k"], 1.0, 1.0), "StoreTimeout", "tb", 1.0),
    Go(),
    Reached(),
    Never("rank 1 ended without reaching 'x'"),
    Stop(),
    Event(at=0.123, kind=EventKind.SIGNAL, text="SIGINT sent to rank 3", rank=3),
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Finished) and a.exception is not None:
        # Exceptions do not compare equal across a round trip; their type and text do.
        exc = b.exception
        return (
            type(exc) is type(a.exception)
            and str(exc) == str(a.exception)
            and (dataclasses.replace(a, exception=None) == dataclasses.replace(b, exception=None))
        )
    return bool(a == b)


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_pickles_and_crosses_a_pipe(msg: Any) -> None:
    assert _same(msg, pickle.loads(pickle.dumps(msg)))
    ours, theirs = multiprocess.Pipe(duplex=True)  # the transport ranks and runner use
    try:
        ours.send(msg)
        assert _same(msg, theirs.recv())
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_are_frozen_and_slotted(msg: Any) -> None:
    assert not hasattr(msg, "__dict__")
    for f in dataclasses.fields(msg):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, f.name, None)


def test_an_event_prints_as_the_report_line_it_was() -> None:
    event = Event(at=0.1234, kind=EventKind.ESCALATED, text="SIGTERM sent to rank(s) 0, 2")
    assert str(event) == "   0.123 s  SIGTERM sent to rank(s) 0, 2"
    assert event.rank is None and event.kind == "escalated"


def test_an_event_record_can_be_extended_with_required_fields() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Operation(Event):
        op: str
        key: str

    rec = Operation(at=1.0, kind="op", text="rank 0 set k", rank=0, op="set", key="k")
    assert str(rec) == "   1.000 s  rank 0 set k" and isinstance(rec, Event)
