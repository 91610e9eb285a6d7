"""The error tree (bases, attributes, pickling) and argument conversion."""

from __future__ import annotations

import pickle
from datetime import timedelta

import pytest

from storeharness.stores import (
    QueueEmpty,
    StoreBroken,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreValueError,
    UnsupportedOperation,
)
from storeharness.stores._types import as_key, as_seconds, as_value, parse_counter, wrap_int64

ERRORS = [
    StoreError("plain", extra=1),
    StoreTimeout("wait", ["a", "b"], 0.31, 0.3, "HashStore()", "2 of 3 arrived"),
    QueueEmpty("q", "FileStore('/x')"),
    StoreClosed("get", "HashStore()"),
    StoreBroken("server 127.0.0.1:29500 went away", host="127.0.0.1", port=29500),
    StoreValueError("bad counter", key="k"),
    UnsupportedOperation("MyStore", "queue_push", "no queues"),
]


@pytest.mark.parametrize("err", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_attributes(err: StoreError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert back._attrs == err._attrs
    for name, value in err._attrs.items():
        assert getattr(back, name) == value
    assert isinstance(back, RuntimeError)


def test_error_bases_name_what_happened() -> None:
    timeout = ERRORS[1]
    assert isinstance(timeout, TimeoutError) and isinstance(timeout, StoreError)
    assert isinstance(ERRORS[4], ConnectionError)
    assert isinstance(ERRORS[5], ValueError)
    assert isinstance(ERRORS[6], NotImplementedError)
    assert not isinstance(ERRORS[3], StoreBroken), "closed-by-us is not broken-by-peer"


def test_timeout_message_carries_everything() -> None:
    err = StoreTimeout("wait", ["a", "b"], 0.31, 0.3, "HashStore()", "2 of 3 arrived")
    text = str(err)
    for part in ["wait", "0.3 s", "0.310 s", "'a'", "'b'", "HashStore()", "2 of 3 arrived"]:
        assert part in text
    assert (err.op, err.keys, err.elapsed, err.timeout) == ("wait", ("a", "b"), 0.31, 0.3)


def test_unsupported_names_class_and_method() -> None:
    assert str(ERRORS[6]) == "MyStore does not support queue_push(): no queues"


@pytest.mark.parametrize(
    ("raw", "key"),
    [("k", "k"), (b"k", "k"), (b"caf\xc3\xa9", "café"), (bytearray(b"x"), "x")],
)
def test_as_key(raw: object, key: str) -> None:
    assert as_key(raw) == key


def test_undecodable_bytes_key_round_trips() -> None:
    key = as_key(b"\xff\x00")
    assert key.encode("utf-8", "surrogateescape") == b"\xff\x00"


@pytest.mark.parametrize("bad", [1, None, 1.5, ["k"]])
def test_as_key_rejects(bad: object) -> None:
    with pytest.raises(TypeError, match="key must be str or bytes"):
        as_key(bad)


def test_as_value() -> None:
    assert as_value("é") == "é".encode()
    assert as_value(memoryview(b"ab")) == b"ab"
    with pytest.raises(TypeError, match=r"use str\(n\)"):
        as_value(5)


@pytest.mark.parametrize(
    ("timeout", "seconds"), [(timedelta(milliseconds=250), 0.25), (2, 2.0), (0.5, 0.5), (0, 0.0)]
)
def test_as_seconds(timeout: object, seconds: float) -> None:
    assert as_seconds(timeout) == seconds


@pytest.mark.parametrize(
    ("bad", "kind"),
    [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)],
)
def test_as_seconds_rejects(bad: object, kind: type[Exception]) -> None:
    with pytest.raises(kind, match="timeout"):
        as_seconds(bad)


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        (b"12", 12),
        (b" \t12", 12),
        (b"12abc", 12),
        (b"+5", 5),
        (b"-7", -7),
        (b"0x10", 0),
        (b"", 0),
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)),
    ],
)
def test_parse_counter_is_stoll(raw: bytes, number: int) -> None:
    assert parse_counter(raw, "k") == number


@pytest.mark.parametrize("raw", [b"abc", b" ", b"-", b"9223372036854775808"])
def test_parse_counter_rejects(raw: bytes) -> None:
    with pytest.raises(StoreValueError, match="'k'"):
        parse_counter(raw, "k")


def test_wrap_int64() -> None:
    assert wrap_int64(2**63) == -(2**63)
    assert wrap_int64(-(2**63) - 1) == 2**63 - 1
    assert wrap_int64(5) == 5
