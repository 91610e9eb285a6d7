"""A history: every store operation of every rank, with its invocation and completion times.

Times are ``time.monotonic_ns()``, which on Linux is one system-wide clock, so the operations of
different processes of one machine compare directly.  An operation whose outcome nobody knows
(it timed out at the transport, its connection broke, its rank was killed or stopped inside it)
has no completion time and the result :data:`UNKNOWN`: it may have taken effect at any moment
after its invocation, or never.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...stores.conformance._model import Raised

__all__ = ["TIMEOUT", "UNKNOWN", "History", "Op", "describe_value"]

#: The operation's outcome is not known (see the module docstring).
UNKNOWN = Raised("unknown")
#: The operation raised the store's timeout error (``StoreTimeout``).
TIMEOUT = Raised("timeout")

#: Operations whose outcome says nothing about the state once unknown (they change nothing).
READS = frozenset({"get", "check", "wait", "multi_get", "num_keys", "list_keys", "queue_len"})


@dataclass(frozen=True, slots=True)
class Op:
    """One store operation as a rank made it.

    ``keys`` are the keys it names (as the scenario wrote them), ``args`` the rest of its
    arguments; ``call`` and ``ret`` are nanoseconds on the monotonic clock, ``ret`` is ``None``
    when the outcome is unknown.  ``client`` tells apart handles of one rank (its clones).
    """

    index: int
    rank: int
    client: int
    name: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    call: int
    ret: int | None
    result: Any
    error: str = ""

    @property
    def unknown(self) -> bool:
        return self.ret is None

    def __str__(self) -> str:
        return f"{self.signature()} -> {self.outcome()}"

    def signature(self) -> str:
        parts = (
            [repr(k) for k in self.keys] if self.name not in _LIST_OPS else [repr(list(self.keys))]
        )
        if self.name == "multi_set":
            parts.append(describe_value(list(self.args[0])))
        elif self.name in ("multi_get", "wait", "barrier", "check"):
            pass
        else:
            parts += [describe_value(a) for a in self.args]
        return f"{self.name}({', '.join(parts)})"

    def outcome(self) -> str:
        if self.ret is None:
            return f"unknown ({self.error})" if self.error else "unknown"
        if isinstance(self.result, Raised):
            return f"raised {self.result.kind}"
        return describe_value(self.result)


_LIST_OPS = frozenset({"check", "wait", "multi_get", "multi_set"})


def describe_value(value: Any, limit: int = 40) -> str:
    """A short repr for reports (long values are cut in the middle)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}…{text[-10:]}"


@dataclass
class History:
    """Every operation of a run, in invocation order, and when the run started (``t0``, ns).

    ``events`` are the runner's (time in ns on the same clock, text): faults, stops.  The
    verdict of the last :func:`~.check.check` is cached on the history (:attr:`verdict`).
    """

    ops: list[Op]
    t0: int = 0
    events: list[tuple[int, str]] = field(default_factory=list)
    verdict: Any = None

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def end(self) -> int:
        """The latest time the history knows of (for unknown operations' open ends)."""
        times = [o.ret if o.ret is not None else o.call for o in self.ops]
        times += [t for t, _ in self.events]
        return max(times, default=self.t0)

    @classmethod
    def build(
        cls, ops: Sequence[Op], t0: int = 0, events: Sequence[tuple[int, str]] = ()
    ) -> History:
        """A history of ``ops`` renumbered in invocation order."""
        ordered = sorted(ops, key=lambda o: (o.call, o.rank, o.index))
        renumbered = [
            Op(i, o.rank, o.client, o.name, o.keys, o.args, o.call, o.ret, o.result, o.error)
            for i, o in enumerate(ordered)
        ]
        return cls(renumbered, t0, list(events))
