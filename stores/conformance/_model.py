"""The sequential model of the Store contract: one key's transitions, and a whole-store model.

This is the one model.  :func:`apply` says what a single operation on one key does to that key's
state and what it returns; the property tests drive it through :class:`ReferenceModel` (plain
dictionaries), and the linearizability checker of ``storeharness.harness.history`` drives it on
immutable per-partition states.  Each key's state is a :data:`Cell`: its value (``None`` when
absent) and its FIFO queue (queues live beside values under the same name, as in torch).

Blocking calls are modelled by where they may return: an operation that would block on this
state answers :data:`BLOCKS` (a completed ``get`` cannot be linearized there; a timed-out one
can).  The decisions (compare_set, add) are written out again here on purpose: a model that
called the stores' own helpers could not catch a bug in them.
"""

from __future__ import annotations

import builtins
from collections import deque
from dataclasses import dataclass
from typing import Any, TypeAlias

from .._types import parse_counter, wrap_int64

__all__ = [
    "BLOCKS",
    "EMPTY_CELL",
    "QUEUE_EMPTY",
    "VALUE_ERROR",
    "Cell",
    "Raised",
    "ReferenceModel",
    "apply",
    "exists",
]

#: One key's state: its value (``None`` = absent) and its queue, oldest first.
Cell: TypeAlias = tuple[bytes | None, tuple[bytes, ...]]
EMPTY_CELL: Cell = (None, ())


@dataclass(frozen=True, slots=True)
class Raised:
    """An operation's outcome that is an error of a kind the contract names."""

    kind: str  # "timeout", "value" (add on non-integer text), "queue empty"

    def __repr__(self) -> str:
        return f"raised {self.kind}"


#: ``add`` on a value that is not integer text.
VALUE_ERROR = Raised("value")
#: A non-blocking ``queue_pop`` on an empty queue.
QUEUE_EMPTY = Raised("queue empty")
#: What a blocking operation answers on a state where it would block.
BLOCKS = Raised("blocks")


def exists(cell: Cell) -> bool:
    """torch's rule for ``check``/``wait``: a value, or a non-empty queue."""
    return cell[0] is not None or bool(cell[1])


def _add(value: bytes | None, amount: int) -> tuple[bytes | None, Any]:
    if value is None:
        total = amount
    else:
        try:
            total = wrap_int64(parse_counter(value, "") + amount)
        except ValueError:
            return value, VALUE_ERROR
    return str(total).encode(), total


def _compare_set(value: bytes | None, expected: bytes, desired: bytes) -> tuple[bytes | None, Any]:
    if value is None:
        if expected:
            return None, expected  # torch's "lie": nothing written, expected echoed
    elif value != expected:
        return value, value
    return desired, desired


def apply(op: str, cell: Cell, args: tuple[Any, ...]) -> tuple[Cell, Any]:
    """Do ``op`` (with its arguments after the key) on one key's ``cell``: (new cell, result).

    Operations: ``set(v)``, ``get()``, ``add(n)``, ``compare_set(e, d)``, ``append(v)``,
    ``delete_key()``, ``exists()`` (one key of ``check``/``wait``), ``queue_push(v)``,
    ``queue_pop(block)``, ``queue_len()``.  Raises ``ValueError`` for any other name.
    """
    value, queue = cell
    match op:
        case "get":
            return cell, BLOCKS if value is None else value
        case "set":
            return (args[0], queue), None
        case "add":
            new, result = _add(value, args[0])
            return (new, queue), result
        case "compare_set":
            new, result = _compare_set(value, args[0], args[1])
            return (new, queue), result
        case "append":
            return ((value or b"") + args[0], queue), None
        case "delete_key":
            return (None, queue), value is not None
        case "exists":
            return cell, value is not None or bool(queue)
        case "queue_push":
            return (value, (*queue, args[0])), None
        case "queue_pop":
            if queue:
                return (value, queue[1:]), queue[0]
            return cell, BLOCKS if args[0] else QUEUE_EMPTY
        case "queue_len":
            return cell, len(queue)
    raise ValueError(f"the model has no single-key operation {op!r}")


class ReferenceModel:
    """What a store holds after a sequence of operations, and what each one returns.

    A thin driver of :func:`apply` over dictionaries, for model-based (property) tests.
    """

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.queues: dict[str, deque[bytes]] = {}

    def _do(self, op: str, key: str, *args: Any) -> Any:
        cell: Cell = (self.data.get(key), tuple(self.queues.get(key, ())))
        (value, queue), result = apply(op, cell, args)
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        if queue or key in self.queues:
            self.queues[key] = deque(queue)
        return result

    def set(self, key: str, value: bytes) -> None:
        self._do("set", key, value)

    def get(self, key: str) -> bytes | None:
        """The value, or ``None`` where a store would block."""
        result = self._do("get", key)
        return None if result is BLOCKS else result

    def add(self, key: str, amount: int) -> int:
        """The new total; raises ``ValueError`` where a store must (non-integer text)."""
        result = self._do("add", key, amount)
        if result is VALUE_ERROR:
            raise ValueError(f"add: the value of {key!r} is not an integer")
        return int(result)

    def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        return bytes(self._do("compare_set", key, expected, desired))

    def append(self, key: str, value: bytes) -> None:
        self._do("append", key, value)

    def multi_set(self, keys: list[str], values: list[bytes]) -> None:
        for key, value in zip(keys, values, strict=True):
            self._do("set", key, value)

    def delete_key(self, key: str) -> bool:
        return bool(self._do("delete_key", key))

    def check(self, keys: list[str]) -> bool:
        return all(self._do("exists", k) for k in keys)

    def num_keys(self) -> int:
        return len(self.data)

    def list_keys(self) -> builtins.set[str]:
        return set(self.data)

    def queue_push(self, key: str, value: bytes) -> None:
        self._do("queue_push", key, value)

    def queue_pop(self, key: str) -> bytes | None:
        """The popped value, or ``None`` where a non-blocking pop raises ``QueueEmpty``."""
        result = self._do("queue_pop", key, False)
        return None if result is QUEUE_EMPTY else result

    def queue_len(self, key: str) -> int:
        return int(self._do("queue_len", key))
