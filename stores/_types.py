"""Argument conversion shared by every store: keys, values, timeouts, counters.

Each function names the argument it rejects and what was passed, so a caller can act on the
message.  They sit on every hot path, so they test the common type first and return early.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import TypeAlias

from ._errors import StoreValueError

__all__ = [
    "DEFAULT_TIMEOUT",
    "KeyLike",
    "TimeoutLike",
    "ValueLike",
    "as_key",
    "as_keys",
    "as_seconds",
    "as_value",
    "check_world_size",
    "compare_set_outcome",
    "deadline_after",
    "next_counter",
    "parse_counter",
    "wrap_int64",
]

KeyLike: TypeAlias = str | bytes
ValueLike: TypeAlias = str | bytes | bytearray | memoryview
TimeoutLike: TypeAlias = timedelta | float | int

#: torch's ``Store::kDefaultTimeout``.
DEFAULT_TIMEOUT = 300.0

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def as_key(key: object) -> str:
    """Return ``key`` as ``str``; ``bytes`` keys decode as UTF-8, undecodable bytes preserved.

    Undecodable bytes map to lone surrogates (``surrogateescape``), so any byte string is a key
    and encodes back to the same bytes on the wire or on disk.

    Raises ``TypeError`` for anything but ``str``/``bytes``.
    """
    if type(key) is str:
        return key
    if isinstance(key, str):
        return str(key)
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("utf-8", "surrogateescape")
    raise TypeError(f"store key must be str or bytes, got {type(key).__name__} {key!r}")


def as_keys(keys: Iterable[object], arg: str = "keys") -> list[str]:
    """Convert a list of keys; a bare ``str``/``bytes`` is rejected (it would iterate chars)."""
    if isinstance(keys, str | bytes):
        raise TypeError(
            f"{arg} must be a list of keys, got a single {type(keys).__name__} {keys!r}"
        )
    return [k if type(k) is str else as_key(k) for k in keys]


def as_value(value: object, arg: str = "value") -> bytes:
    """Return ``value`` as ``bytes``: ``str`` encodes as UTF-8, bytes-like objects are copied.

    Raises ``TypeError`` for anything else (``int`` included, as torch does).
    """
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(
        f"store {arg} must be str or bytes, got {type(value).__name__} {value!r}"
        + (" (use str(n) to store a number)" if isinstance(value, int | float) else "")
    )


def as_seconds(timeout: object, arg: str = "timeout") -> float:
    """Return a timeout in seconds from a ``timedelta`` or a number of seconds.

    ``0`` means *no limit* (torch's ``kNoTimeout``).  Raises ``TypeError`` for other types and
    ``ValueError`` for negative or non-finite durations.
    """
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(
            f"{arg} must be a datetime.timedelta or a number of seconds, "
            f"got {type(timeout).__name__} {timeout!r}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{arg} must be a finite duration >= 0 (0 = no limit), got {timeout!r}")
    return seconds


def deadline_after(seconds: float) -> float | None:
    """The monotonic deadline ``seconds`` from now; ``None`` (never) for 0 = no limit."""
    return None if seconds == 0 else time.monotonic() + seconds


# std::stoll: optional C-locale whitespace, optional sign, at least one digit; the rest ignored.
_STOLL = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def parse_counter(raw: bytes, key: str) -> int:
    """Read a stored counter the way torch's ``add`` does (C++ ``std::stoll``).

    Leading whitespace and a sign are accepted, trailing text is ignored (``b"12abc"`` -> 12),
    and an empty value counts as 0.  Raises ``StoreValueError`` (a ``ValueError``) when the value
    does not start with a number or the number does not fit in int64.
    """
    if raw.isdigit() and len(raw) < 19:
        return int(raw)
    if not raw:
        return 0
    match = _STOLL.match(raw)
    if match is None:
        raise StoreValueError(
            f"add({key!r}): stored value {raw[:40]!r} is not an integer counter; "
            "add() only works on keys created by add() or set to decimal text",
            key=key,
        )
    text = match.group(1)
    # Past 19 significant digits it cannot fit; checked before int(), which refuses more than
    # 4300 digits with a plain ValueError (and would spend quadratic time on a huge number).
    digits = text.lstrip(b"+-").lstrip(b"0") or b"0"
    sign = -1 if text.startswith(b"-") else 1
    number = sign * int(digits) if len(digits) <= 19 else _INT64_MAX + 1
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise StoreValueError(
            f"add({key!r}): stored value {raw[:40]!r} is outside the int64 range", key=key
        )
    return number


def check_amount(amount: object, key: str) -> int:
    """Validate an ``add`` amount: an ``int`` (not ``bool``) within int64."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TypeError(f"add({key!r}) amount must be an int, got {type(amount).__name__}")
    if not _INT64_MIN <= amount <= _INT64_MAX:
        raise TypeError(f"add({key!r}) amount {amount} does not fit in int64")
    return amount


def next_counter(old: bytes | None, amount: int, key: str) -> int:
    """The value ``add(key, amount)`` leaves when ``key`` held ``old`` (``None``: absent)."""
    return amount if old is None else wrap_int64(parse_counter(old, key) + amount)


def compare_set_outcome(
    current: bytes | None, expected: bytes, desired: bytes
) -> tuple[bool, bytes]:
    """torch's four compare_set cases: ``(write desired?, value to return)``."""
    if current is None:
        return (True, desired) if not expected else (False, expected)
    return (True, desired) if current == expected else (False, current)


def check_world_size(key: str, world_size: object) -> int:
    """Validate ``barrier``'s participant count; raises ``ValueError`` naming the barrier."""
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"barrier({key!r}): world_size must be an int >= 1, got {world_size!r}")
    return world_size


def wrap_int64(number: int) -> int:
    """Wrap to int64 as torch's counters do on overflow (``(2**63-1) + 1 == -2**63``)."""
    if _INT64_MIN <= number <= _INT64_MAX:
        return number
    return (number - _INT64_MIN) % 2**64 + _INT64_MIN
