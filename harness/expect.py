"""What a scenario expects: of each rank (``returns``, ``raises``, ...) and of the whole world.

A rank's expectation says which fate it must meet and, for a value or an error, what it must
look like: an exact value or a predicate, an error class with a regular expression or a
predicate for its message.  A world-level check sees every rank's fate and value at once, for
what no single rank can say: "exactly one rank won the election", "every rank agrees".

Messages read as English and say what was expected and what happened instead.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._results import Fate, RankResult, WorldResult

__all__ = [
    "Expect",
    "WorldCheck",
    "all_agree",
    "exactly_one",
    "killed",
    "never_starts",
    "raises",
    "returns",
    "times_out",
]

_ANY_VALUE: Any = object()

#: ``check(world)``: ``None`` or ``True`` when the world is as it should be; ``False``, a
#: string saying what is wrong, or an ``AssertionError`` when it is not.
WorldCheck = Callable[[WorldResult], "bool | str | None"]


def _name(fn: object) -> str:
    name = getattr(fn, "__name__", None) or repr(fn)
    return "a lambda" if name == "<lambda>" else name


@dataclass(frozen=True)
class Expect:
    """What a rank is expected to do; :meth:`problem` says how a result falls short."""

    def problem(self, result: RankResult) -> str | None:
        raise NotImplementedError

    def _fate(self, result: RankResult, fate: Fate, what: str) -> str | None:
        if result.fate is not fate:
            return f"expected to {what}, but {result.describe().split(': ', 1)[1]}"
        return None


@dataclass(frozen=True)
class Returns(Expect):
    value: Any = _ANY_VALUE

    def __str__(self) -> str:
        if self.value is _ANY_VALUE:
            return "returns"
        if callable(self.value):
            return f"returns a value satisfying {_name(self.value)}"
        return f"returns {self.value!r}"

    def problem(self, result: RankResult) -> str | None:
        bad = self._fate(result, Fate.RETURNED, "return")
        if bad is not None or self.value is _ANY_VALUE:
            return bad
        if callable(self.value):
            try:
                ok = self.value(result.value)
            except Exception as exc:
                return (
                    f"expected to return a value satisfying {_name(self.value)}, but checking "
                    f"{result.value!r} raised {type(exc).__name__}: {exc}"
                )
            if not ok:
                return (
                    f"expected to return a value satisfying {_name(self.value)}, "
                    f"but returned {result.value!r}"
                )
            return None
        if result.value != self.value:
            return f"expected to return {self.value!r}, but returned {result.value!r}"
        return None


@dataclass(frozen=True)
class Raises(Expect):
    error: type[BaseException]
    match: str | Callable[[BaseException], object] | None = None

    def __str__(self) -> str:
        if self.match is None:
            return f"raises {self.error.__name__}"
        if callable(self.match):
            return f"raises {self.error.__name__} satisfying {_name(self.match)}"
        return f"raises {self.error.__name__} matching {self.match!r}"

    def problem(self, result: RankResult) -> str | None:
        bad = self._fate(result, Fate.RAISED, f"raise {self.error.__name__}")
        if bad is not None:
            return bad
        exc = result.exception
        if exc is None or not isinstance(exc, self.error):
            return f"expected to raise {self.error.__name__}, but raised {result.error}"
        if callable(self.match):
            try:
                ok = self.match(exc)
            except Exception as err:
                return f"checking the error with {_name(self.match)} raised {err!r}"
            if not ok:
                return f"expected an error satisfying {_name(self.match)}, but got {str(exc)!r}"
        elif self.match is not None and not re.search(self.match, str(exc)):
            return f"expected a message matching {self.match!r}, but got {str(exc)!r}"
        return None


@dataclass(frozen=True)
class Killed(Expect):
    sig: signal.Signals | None = None

    def __str__(self) -> str:
        return f"is killed by {self.sig.name}" if self.sig else "is killed"

    def problem(self, result: RankResult) -> str | None:
        bad = self._fate(result, Fate.DIED, f"be {str(self).removeprefix('is ')}")
        if bad is None and self.sig is not None and result.signal is not self.sig:
            return f"expected to be killed by {self.sig.name}, but {result.describe()}"
        return bad


@dataclass(frozen=True)
class TimesOut(Expect):
    def __str__(self) -> str:
        return "times out"

    def problem(self, result: RankResult) -> str | None:
        return self._fate(result, Fate.TIMED_OUT, "be stopped at its time limit")


@dataclass(frozen=True)
class NeverStarts(Expect):
    def __str__(self) -> str:
        return "never starts"

    def problem(self, result: RankResult) -> str | None:
        return self._fate(result, Fate.MISSING, "never start")


def returns(value: Any = _ANY_VALUE) -> Expect:
    """The rank returns: anything, ``value``, or (``value`` callable) a value it accepts."""
    return Returns(value)


def raises(
    error: type[BaseException], match: str | Callable[[BaseException], object] | None = None
) -> Expect:
    """The rank raises ``error`` (a subclass counts).

    ``match``: a regular expression its message must contain (``re.search``), or a callable
    that takes the exception and returns whether it is the right one.
    """
    return Raises(error, match)


def killed(sig: signal.Signals | None = None) -> Expect:
    """The rank's process dies (by ``sig``, if given) without a result."""
    return Killed(sig)


def times_out() -> Expect:
    """The rank is still running at its time limit and is stopped by the runner."""
    return TimesOut()


def never_starts() -> Expect:
    """The rank never starts (a ``Missing`` fault, or a ``Late`` trigger that never fires)."""
    return NeverStarts()


# ------------------------------------------------------------------------- world checks


def exactly_one(
    predicate: Callable[[RankResult], object], what: str = "rank satisfies the condition"
) -> WorldCheck:
    """A world check: exactly one rank's result satisfies ``predicate``.

    ``exactly_one(lambda r: r.value == "leader", "winner")`` says "exactly one winner".
    """

    def check(world: WorldResult) -> str | None:
        hits = [r.rank for r in world if predicate(r)]
        if len(hits) == 1:
            return None
        who = f"ranks {hits}" if hits else "none"
        return f"expected exactly one {what}, found {len(hits)} ({who})"

    check.__name__ = f"exactly one {what}"
    return check


def all_agree(
    value: Callable[[RankResult], object] = lambda r: r.value,
    among: Callable[[RankResult], bool] = lambda r: r.fate is Fate.RETURNED,
) -> WorldCheck:
    """A world check: every rank ``among`` (by default those that returned) gives one value."""

    def check(world: WorldResult) -> str | None:
        seen: dict[str, list[int]] = {}
        for rank in world:
            if among(rank):
                seen.setdefault(repr(value(rank)), []).append(rank.rank)
        if len(seen) <= 1:
            return None
        parts = "; ".join(f"{v} from ranks {ranks}" for v, ranks in seen.items())
        return f"expected every rank to agree, but got {parts}"

    check.__name__ = "all agree"
    return check


def run_checks(checks: Iterable[WorldCheck], world: WorldResult) -> list[str]:
    """Each failed world check's problem, in order."""
    problems = []
    for check in checks:
        try:
            verdict = check(world)
        except AssertionError as exc:
            verdict = str(exc) or f"{_name(check)} failed"
        except Exception as exc:
            verdict = f"the world check {_name(check)} raised {type(exc).__name__}: {exc}"
        if verdict is False:
            verdict = f"the world check {_name(check)} failed"
        if isinstance(verdict, str) and verdict:
            problems.append(verdict)
    return problems
