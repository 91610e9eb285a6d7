"""Is a history linearizable?  Wing & Gong's search as Lowe refined it, memoized as porcupine does.

Every operation must appear to take effect at one instant between its invocation and its
completion, in an order the sequential model (``stores.conformance._model``) accepts.  The
search walks a list of invocation and completion events: it linearizes a pending operation
whose result the model accepts, backtracks when it meets the completion of an operation not yet
linearized, and never visits the same (set of linearized operations, model state) twice.

The history is split into independent parts first: keys an operation touches together stay
together (union-find), so only operations that can observe each other are searched together.

* ``check`` and an atomic ``multi_get``/``multi_set`` (a store whose ``has_extended_api()`` is
  true does them in one request) join their keys' parts; ``num_keys`` joins every key.
* ``wait`` on several keys is split into one ``wait`` per key over the same interval: the
  contract says each key must have existed at *some* moment of the wait, not all at once.  A
  non-native ``multi_get``/``multi_set`` (a loop of ``get``/``set``) is split the same way.
* An operation with an unknown outcome may take effect at any time after its invocation, or
  never: it completes at infinity and accepts any result.  Reads with unknown outcomes are
  dropped (they cannot constrain anything); nothing else is.
* ``barrier`` and ``list_keys`` are not modelled (a barrier's keys differ between backends): they
  are listed in the verdict as not checked, with every key under a barrier's ``key/``, and
  ``num_keys`` while barriers run.

A time budget bounds the whole check; past it the verdict is *unknown*, never a hang.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...stores.conformance._model import BLOCKS, EMPTY_CELL, QUEUE_EMPTY, apply
from ._ops import READS, TIMEOUT, UNKNOWN, History, Op

__all__ = ["Failure", "Verdict", "check"]

_INF = math.inf
_SINGLE = frozenset(
    {"get", "set", "add", "compare_set", "append", "delete_key", "queue_push", "queue_pop",
     "queue_len"}
)  # fmt: skip

State = tuple[Any, ...]
Step = Callable[[State], "State | None"]


class _Undecided(Exception):
    pass


@dataclass(frozen=True)
class _COp:
    """One operation as the search sees it (a split ``wait`` gives several of these)."""

    op: Op
    keys: tuple[str, ...]
    kind: str  # the model's operation, or "check", "multi_get", "multi_set", "num_keys"
    args: tuple[Any, ...]
    expected: Any
    unknown: bool

    @property
    def call(self) -> int:
        return self.op.call

    @property
    def ret(self) -> float:
        return _INF if self.unknown or self.op.ret is None else self.op.ret


@dataclass(frozen=True)
class Failure:
    """The smallest failing part found: one part's keys, its operations up to the moment the
    history stopped being linearizable, and the operation whose completion made it so."""

    keys: tuple[str, ...]
    ops: tuple[Op, ...]
    culprit: Op
    cut: int  # the culprit's completion time (ns): operations still open then are unknown

    def text(self, t0: int | None = None, limit: int = 14) -> str:
        """The failing operations per rank, latest ``limit`` of each, times from ``t0`` (ns;
        by default the first of them)."""
        if t0 is None:
            t0 = min(o.call for o in self.ops)
        lines = [
            f"not linearizable on key(s) {', '.join(map(repr, self.keys))}: no order of these "
            f"operations explains {self.culprit.signature()} -> {self.culprit.outcome()} "
            f"(rank {self.culprit.rank})"
        ]
        for rank in sorted({o.rank for o in self.ops}):
            mine = [o for o in self.ops if o.rank == rank]
            lines.append(f"  rank {rank}:")
            if len(mine) > limit:
                lines.append(f"    ... {len(mine) - limit} earlier operation(s)")
            for o in mine[-limit:]:
                end = "open" if o.ret is None or o.ret > self.cut else f"{(o.ret - t0) / 1e6:9.3f}"
                mark = "  <-- contradiction" if o.index == self.culprit.index else ""
                lines.append(f"    {(o.call - t0) / 1e6:9.3f} .. {end:>9} ms  {o}{mark}")
        return "\n".join(lines)


@dataclass
class Verdict:
    """``ok``: ``True`` linearizable, ``False`` not, ``None`` undecided within the budget."""

    ok: bool | None
    ops: int
    parts: int
    elapsed: float
    failure: Failure | None = None
    unchecked: list[str] = field(default_factory=list)
    why_unknown: str = ""

    def __str__(self) -> str:
        if self.ok is None:
            head = f"linearizability undecided: {self.why_unknown}"
        elif self.ok:
            head = f"linearizable: {self.ops} operation(s) in {self.parts} part(s)"
        else:
            head = "NOT linearizable"
        note = f"; not checked: {'; '.join(self.unchecked)}" if self.unchecked else ""
        return f"{head} ({self.elapsed:.3f} s){note}"


# ------------------------------------------------------------------------ preprocessing


def _expand(history: History) -> tuple[list[_COp], list[str]]:
    """The operations the search sees, and what is left unchecked (with why)."""
    out: list[_COp] = []
    barriers = [o for o in history if o.name == "barrier"]
    tainted = tuple(f"{o.keys[0]}/" for o in barriers)
    unchecked = []
    if barriers:
        names = sorted({o.keys[0] for o in barriers})
        unchecked.append(f"{len(barriers)} barrier call(s) on {names} (not modelled)")
    listed = sum(1 for o in history if o.name == "list_keys")
    if listed:
        unchecked.append(f"{listed} list_keys call(s) (not modelled)")
    skipped_keys: set[str] = set()
    for op in history:
        unknown = op.ret is None
        if op.name in ("barrier", "list_keys") or (unknown and op.name in READS):
            continue
        if any(k.startswith(tainted) for k in op.keys) if tainted else False:
            skipped_keys.update(op.keys)
            continue
        out += _split(op, unknown)
    if skipped_keys:
        unchecked.append(f"operations on barrier keys {sorted(skipped_keys)}")
    if barriers and any(c.kind == "num_keys" for c in out):
        out = [c for c in out if c.kind != "num_keys"]
        unchecked.append("num_keys (barriers create keys of their own)")
    return out, unchecked


def _split(op: Op, unknown: bool) -> list[_COp]:
    name, keys, res = op.name, op.keys, (UNKNOWN if unknown else op.result)
    if name in _SINGLE:
        return [_COp(op, keys, name, op.args, res, unknown)]
    if name == "wait":
        if res == TIMEOUT and len(keys) > 1:
            return []  # some key was missing; which one is not said: no constraint
        return [_COp(op, (k,), "exists", (), res, unknown) for k in keys]
    if name == "check":
        return [_COp(op, keys, "check", (), res, unknown)] if keys else []
    if name == "multi_get":
        if res == TIMEOUT or not keys:
            return []
        if op.args and op.args[0]:
            return [_COp(op, keys, "multi_get", (), res, unknown)]
        got: list[Any] = list(op.result)
        return [_COp(op, (k,), "get", (), v, unknown) for k, v in zip(keys, got, strict=True)]
    if name == "multi_set":
        values, atomic = op.args[0], bool(op.args[1]) if len(op.args) > 1 else False
        if atomic:
            return [_COp(op, keys, "multi_set", (values,), res, unknown)]
        return [
            _COp(op, (k,), "set", (v,), None if not unknown else UNKNOWN, unknown)
            for k, v in zip(keys, values, strict=True)
        ]
    if name == "num_keys":
        return [_COp(op, (), "num_keys", (), res, unknown)]
    raise ValueError(f"the checker does not know operation {name!r}")


def _partition(cops: list[_COp]) -> list[tuple[tuple[str, ...], list[_COp], bool]]:
    """Independent parts: (keys, operations, whether num_keys is among them)."""
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        root = k
        while parent[root] != root:
            root = parent[root]
        while parent[k] != root:
            parent[k], k = root, parent[k]
        return root

    for c in cops:
        for k in c.keys:
            parent.setdefault(k, k)
    counting = any(c.kind == "num_keys" for c in cops)
    every = list(parent)
    for c in cops:
        group = every if c.kind == "num_keys" else c.keys
        for k in group[1:]:
            a, b = find(group[0]), find(k)
            if a != b:
                parent[b] = a
    parts: dict[str, list[_COp]] = {}
    free: list[_COp] = []  # num_keys in a history without keys
    for c in cops:
        if c.keys:
            parts.setdefault(find(c.keys[0]), []).append(c)
        else:
            free.append(c)
    if free:
        root = find(every[0]) if every else ""
        parts.setdefault(root, []).extend(free)
    out = []
    for members in parts.values():
        keys = sorted({k for c in members for k in c.keys})
        if counting and any(c.kind == "num_keys" for c in members):
            keys = sorted(every)
        out.append((tuple(keys), members, any(c.kind == "num_keys" for c in members)))
    return out


# ----------------------------------------------------------------------------- steps


def _acceptor(expected: Any, unknown: bool) -> Callable[[Any], bool]:
    """Whether a result the model gives is the one the history recorded (decided once)."""
    if unknown:
        return lambda got: True
    if expected == TIMEOUT:
        return lambda got: got is BLOCKS or got is False
    if expected == QUEUE_EMPTY:
        return lambda got: got is QUEUE_EMPTY or got is BLOCKS
    if expected is None or isinstance(expected, bool):
        return lambda got: got is expected
    return lambda got: got is not BLOCKS and got == expected


def _compile(c: _COp, index: dict[str, int], counting: bool) -> Step:
    """The model step of ``c`` on a part's state (a tuple of cells, then num_keys' base)."""
    kind, args, expected, unknown = c.kind, c.args, c.expected, c.unknown
    slots = tuple(index[k] for k in c.keys)
    if kind in _SINGLE or kind == "exists":
        i = slots[0]
        if kind == "exists":
            expected = True if expected is None else expected
        accepts = _acceptor(expected, unknown)
        memo: dict[Any, Any] = {}  # the model is pure: one answer per cell

        def single(state: State) -> State | None:
            cell = state[i]
            try:
                new = memo[cell]
            except KeyError:
                new, got = apply(kind, cell, args)
                if not accepts(got):
                    new = None
                memo[cell] = new
            if new is None:
                return None
            if len(state) == 1:
                return (new,)
            return (*state[:i], new, *state[i + 1 :])

        return single
    if kind == "check":

        def check(state: State) -> State | None:
            got = all(apply("exists", state[i], ())[1] for i in slots)
            return state if unknown or got == expected else None

        return check
    if kind == "multi_get":

        def multi_get(state: State) -> State | None:
            got = [state[i][0] for i in slots]
            if any(v is None for v in got) and not unknown:
                return None
            return state if unknown or got == list(expected) else None

        return multi_get
    if kind == "multi_set":
        values = args[0]

        def multi_set(state: State) -> State | None:
            cells = list(state)
            for i, v in zip(slots, values, strict=True):
                cells[i] = (v, cells[i][1])
            return tuple(cells)

        return multi_set
    if kind == "num_keys":

        def num_keys(state: State) -> State | None:
            if unknown:
                return state
            present = sum(1 for cell in state[:-1] if cell[0] is not None)
            base = state[-1]
            if base is None:
                return (*state[:-1], expected - present) if expected >= present else None
            return state if base + present == expected else None

        return num_keys
    raise ValueError(f"no model step for {kind!r}")


# ---------------------------------------------------------------------------- search


def _search(cops: Sequence[_COp], keys: tuple[str, ...], counting: bool, deadline: float) -> bool:
    """Whether this part's operations have a linearization (Lowe's algorithm, memoized)."""
    n = len(cops)
    if n == 0:
        return True
    index = {k: i for i, k in enumerate(keys)}
    steps = [_compile(c, index, counting) for c in cops]
    events: list[tuple[float, int, int]] = [(c.call, 0, i) for i, c in enumerate(cops)]
    events += [(c.ret, 1, i) for i, c in enumerate(cops)]
    events.sort()
    m = 2 * n
    head = m
    nxt = [0] * (m + 1)
    prv = [0] * (m + 1)
    op_of = [0] * m
    is_call = [False] * m
    ret_of = [0] * n
    order = [head, *list(range(m))]
    for pos, (_, what, i) in enumerate(events):
        op_of[pos] = i
        is_call[pos] = what == 0
        if what == 1:
            ret_of[i] = pos
    for a, b in itertools.pairwise(order):
        nxt[a], prv[b] = b, a
    nxt[order[-1]] = -1
    match = [ret_of[op_of[e]] if is_call[e] else -1 for e in range(m)]

    state: State = tuple(EMPTY_CELL for _ in keys) + ((None,) if counting else ())
    # The linearized set, kept small for the memo: every operation below ``low`` (in
    # invocation order) is linearized, and bit j of ``rest`` says whether ``low + j`` is.
    low, rest = 0, 0
    cache: set[tuple[int, int, State]] = set()
    stack: list[tuple[int, State]] = []
    entry = nxt[head]
    ticks = 0
    while nxt[head] != -1:
        ticks += 1
        if ticks & 1023 == 0 and time.monotonic() > deadline:
            raise _Undecided
        if is_call[entry]:
            i = op_of[entry]
            new = steps[i](state)
            if new is not None:
                if i == low:
                    new_low, new_rest = low + 1, rest >> 1
                    while new_rest & 1:
                        new_low, new_rest = new_low + 1, new_rest >> 1
                else:
                    new_low, new_rest = low, rest | (1 << (i - low))
                memo = (new_low, new_rest, new)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((entry, state))
                    state, low, rest = new, new_low, new_rest
                    r = match[entry]  # lift the call and its completion out of the list
                    nxt[prv[entry]], prv[nxt[entry]] = nxt[entry], prv[entry]
                    if nxt[r] != -1:
                        prv[nxt[r]] = prv[r]
                    nxt[prv[r]] = nxt[r]
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            if not stack:
                return False
            entry, state = stack.pop()
            i = op_of[entry]
            if i >= low:
                rest &= ~(1 << (i - low))
            else:  # low .. i were all linearized: i no longer is
                k = low - i
                low, rest = i, (rest << k) | ((1 << k) - 2)
            r = match[entry]  # put them back, in the reverse order
            nxt[prv[r]] = r
            if nxt[r] != -1:
                prv[nxt[r]] = r
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
            entry = nxt[entry]
    return True


def _prefix(cops: Sequence[_COp], cut: float) -> list[_COp]:
    """The operations invoked by ``cut``; those still open then become unknown."""
    out = []
    for c in cops:
        if c.call > cut:
            continue
        if c.ret > cut and not c.unknown:
            if c.op.name in READS or c.kind in ("exists", "get", "check", "multi_get"):
                continue
            c = _COp(c.op, c.keys, c.kind, c.args, UNKNOWN, True)
        out.append(c)
    return out


def _smallest(
    cops: Sequence[_COp], keys: tuple[str, ...], counting: bool, deadline: float
) -> Failure:
    """The earliest completion at which the part stops being linearizable (binary search)."""
    cuts = sorted({c.ret for c in cops if c.ret != _INF})
    lo, hi = 0, len(cuts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _search(_prefix(cops, cuts[mid]), keys, counting, deadline):
            lo = mid + 1
        else:
            hi = mid
    cut = cuts[lo] if cuts else _INF
    part = _prefix(cops, cut)
    culprit = next((c.op for c in part if c.ret == cut), part[-1].op)
    ops = sorted({c.op.index: c.op for c in part}.values(), key=lambda o: o.call)
    used = tuple(sorted({k for c in part for k in c.keys})) or keys
    return Failure(used, tuple(ops), culprit, int(cut) if cut != _INF else 0)


def check(history: History, budget: float = 10.0) -> Verdict:
    """Decide whether ``history`` is linearizable within ``budget`` seconds (cached on it)."""
    start = time.monotonic()
    deadline = start + budget
    cops, unchecked = _expand(history)
    parts = _partition(cops)
    parts.sort(key=lambda p: len(p[1]))  # small parts first: a failure shows up sooner
    verdict = Verdict(True, len(cops), len(parts), 0.0, unchecked=unchecked)
    try:
        for keys, members, counting in parts:
            if not _search(members, keys, counting, deadline):
                verdict.ok = False
                try:
                    verdict.failure = _smallest(members, keys, counting, deadline + budget)
                except _Undecided:
                    last = max(members, key=lambda c: c.ret if c.ret != _INF else 0).op
                    ops = tuple(sorted({c.op.index: c.op for c in members}.values(),
                                       key=lambda o: o.call))  # fmt: skip
                    verdict.failure = Failure(keys, ops, last, last.ret or 0)
                break
    except _Undecided:
        verdict.ok = None
        verdict.why_unknown = (
            f"the search did not finish within its {budget:g} s budget "
            "(give linearizable(budget=...) more time, or record fewer concurrent operations)"
        )
    verdict.elapsed = time.monotonic() - start
    history.verdict = verdict
    return verdict
