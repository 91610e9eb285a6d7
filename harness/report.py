"""What a person reads about a run: a line per case, a failure's whole story, a summary.

The command line prints these, the pytest plugin shows :func:`render` as a failing item's
report (through :meth:`CaseResult.report`), and the JSON and JUnit writers carry the same
facts.  A failure tells, per rank, its fate against its expectation, where it raised (the
innermost frame of scenario code: a helper's ``assert`` names the helper's file and line), the
last frames of its traceback, and the tail of its log; then the faults planned and what the
runner did, with times; then the command that replays it.  Identical failures (the same
scenario, the same problems once rank numbers, sizes, stores and times are set aside) are
shown once, listing the other cases.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sysconfig
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import _inspect
from ._results import RankResult
from .scenario import Case

if TYPE_CHECKING:
    from .run import CaseResult

__all__ = [
    "Frame",
    "Style",
    "banner",
    "case_line",
    "case_log_dir",
    "group_failures",
    "json_row",
    "junit",
    "last_frames",
    "located",
    "log_tail",
    "module_path",
    "raised_at",
    "render",
    "replay_command",
    "scenario_code",
    "status",
    "summary",
    "world_problems",
]

#: How many of a traceback's innermost frames and of a log's last lines a failure shows.
FRAMES = 4
LOG_LINES = 12

#: Outcome words as pytest counts them, in the order a summary lists them.
_WORDS = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
_LABELS = {"passed": "PASSED", "failed": "FAILED", "skipped": "SKIP", "error": "ERROR",
           "xfailed": "XFAIL", "xpassed": "XPASS"}  # fmt: skip


def status(result: CaseResult) -> str:
    """The result's outcome as pytest words it: passed, failed, error, xfailed or xpassed."""
    outcome = str(result.outcome).lower()
    if outcome == "xpass" and not result.ok:
        return "failed"  # an unexpected pass under xfail_strict, as pytest counts it
    return {
        "pass": "passed",
        "fail": "failed",
        "skip": "skipped",
        "xfail": "xfailed",
        "xpass": "xpassed",
    }.get(outcome, outcome)


# ----------------------------------------------------------------------------- colour


@dataclass(frozen=True)
class Style:
    """ANSI colour, or none: on a terminal unless ``NO_COLOR`` is set, never when piped."""

    color: bool = False

    @classmethod
    def choose(cls, stream: IO[str], choice: str = "auto") -> Style:
        """``choice`` is ``yes``, ``no`` or ``auto`` (``NO_COLOR``, ``FORCE_COLOR``, a TTY)."""
        if choice in ("yes", "no"):
            return cls(choice == "yes")
        if os.environ.get("NO_COLOR"):
            return cls(False)
        if os.environ.get("FORCE_COLOR"):
            return cls(True)
        tty = hasattr(stream, "isatty") and stream.isatty()
        return cls(tty and os.environ.get("TERM") != "dumb")

    def paint(self, text: str, *codes: str) -> str:
        if not self.color or not codes:
            return text
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m"

    def outcome(self, result: CaseResult, text: str) -> str:
        word = status(result)
        if not result.ok:
            return self.paint(text, "31", "1")  # red
        return self.paint(text, "33") if word.startswith("x") else self.paint(text, "32")


# ------------------------------------------------------------------------- one line each


def _size(case: Case) -> str:
    return case.id.rsplit("-", 1)[1]


def case_line(result: CaseResult, cases: Sequence[Case], style: Style) -> str:
    """``FAILED  name  store  workers  size  time``, aligned over every case of the run; a
    skipped case adds why (as pytest's ``-rs`` does)."""
    case = result.case
    name_w = max(len(c.scenario.name) for c in cases)
    store_w = max(len(c.target) for c in cases)
    size_w = max(len(_size(c)) for c in cases)
    label = _LABELS.get(status(result), status(result).upper())
    return (
        f"{style.outcome(result, f'{label:<6}')}  {case.scenario.name:<{name_w}}  "
        f"{case.target:<{store_w}}  {case.workers:<7}  {_size(case):>{size_w}}  "
        f"{result.elapsed:6.2f} s"
        + (f"  ({result.unsupported})" if status(result) == "skipped" else "")
    )


def summary(
    results: Sequence[CaseResult],
    spent: float,
    style: Style,
    interrupted: str = "",
    *,
    left_out: int = 0,
) -> str:
    """pytest's last line: ``== 3 passed, 1 failed in 2.31 s ==`` (zero counts left out).

    ``left_out`` counts scenarios that did not run on a store at all (it cannot take them, a
    skip mark, slow ones without ``--slow``): pytest reports each of those as a skipped item.
    """
    counts = {word: 0 for word in _WORDS}
    counts["skipped"] = left_out
    for result in results:
        counts[status(result)] = counts.get(status(result), 0) + 1
    parts = [
        f"{n} {word}{'s' if word == 'error' and n > 1 else ''}" for word, n in counts.items() if n
    ]
    text = f" {', '.join(parts) or 'no cases ran'} in {spent:.2f} s "
    if interrupted:
        text = f"{text.rstrip()} (interrupted) "
    width = max(len(text) + 4, min(shutil.get_terminal_size((80, 24)).columns, 100))
    line = text.center(width, "=")
    failed = any(not r.ok for r in results)
    codes = ("31", "1") if failed else (("33", "1") if interrupted or not results else ("32", "1"))
    return style.paint(line, *codes)


def banner(text: str, char: str = "_", width: int = 0) -> str:
    """A section heading as pytest draws one (``____ name ____``)."""
    width = width or max(len(text) + 4, min(shutil.get_terminal_size((80, 24)).columns, 100))
    return f" {text} ".center(width, char)


# ----------------------------------------------------------------------- a failure's story


def render(result: CaseResult, nodeid: str | None = None, style: Style | None = None) -> str:
    """Every rank's fate against its expectation, with the details of each that fell short.

    ``nodeid`` (a pytest node id) makes the replay hint a pytest command.
    """
    style = style or Style()
    case = result.case
    label = _LABELS.get(status(result), status(result).upper())
    head = f"{case.nodeid}: {label} in {result.elapsed:.2f} s (seed {result.seed})"
    lines = [style.outcome(result, head)]
    if result.error:
        lines.append(f"  could not run: {result.error}")
    world = result.world
    if world is not None:
        for rank in world:
            lines += _rank_story(result, rank, style)
    for problem in world_problems(result):
        lines.append(f"  {style.paint('✗', '31')} {problem}")
    if getattr(result, "timeline", ""):
        lines.append(f"  history timeline (HTML): {result.timeline}")
    if world is not None:
        if world.plan:
            lines.append(f"  faults (as seed {result.seed} resolved them):")
            lines += [f"    {fault}" for fault in world.plan]
        if world.events:
            lines.append("  events (seconds since the world started):")
            lines += [f"    {event}" for event in world.events]
    if result.xfail and result.passed and not result.ok:
        lines.append(f"  ✗ XPASS(strict): expected to fail ({result.xfail}), but it passed")
    if result.outcome == "skip":
        lines.append(f"  unsupported by store {result.case.target}: {result.unsupported}")
    elif not result.ok or not result.passed:
        lines.append(f"  replay: {replay_command(result, nodeid)}")
    return "\n".join(lines)


def world_problems(result: CaseResult) -> list[str]:
    """Problems of the whole world (a fault that never fired, a world-level check), if any."""
    return [str(p) for p in getattr(result, "world_problems", None) or ()]


def _rank_story(result: CaseResult, rank: RankResult, style: Style) -> list[str]:
    expect = result.expected.get(rank.rank)
    problem = result.problems.get(rank.rank)
    mark = style.paint("✗", "31") if problem is not None else style.paint("✓", "32")
    lines = [f"  {mark} {rank.describe()}  [expected: {expect}]"]
    if problem is None:
        return lines
    lines.append(f"      {problem}")
    frames, exception = last_frames(rank.traceback)
    at = raised_at(rank.traceback)
    if at:
        lines.append(f"      raised {at}")
    if frames:
        lines.append("      traceback (innermost last):")
        for frame in frames:
            if isinstance(frame, int):
                lines.append(f"        ... {frame} more frame{'s' if frame > 1 else ''} ...")
                continue
            lines.append(f"        {frame.filename}:{frame.lineno} in {frame.name}")
            if frame.line:
                lines.append(f"            {frame.line}")
        lines += [f"      {text}" for text in exception]
    log = log_tail(rank)
    if log:
        lines.append(f"      log (last {len(log)} lines):" if len(log) > 1 else "      log:")
        lines += [f"        | {text}" for text in log]
    return lines


@dataclass(frozen=True)
class Frame:
    """One frame of a formatted traceback: where, and the source line if it was shown."""

    filename: str
    lineno: int
    name: str
    line: str


_FRAME = re.compile(r'^  File "(?P<file>.+)", line (?P<line>\d+), in (?P<name>.+)$')
_CARETS = re.compile(r"^\s*[\^~]+\s*$")


def _parse(tb: str) -> tuple[list[Frame], list[str]]:
    """The frames of a formatted traceback's last exception, and its exception lines."""
    lines = tb.rstrip("\n").splitlines()
    starts = [i for i, text in enumerate(lines) if text.startswith("Traceback (most recent")]
    if not starts:
        return [], []
    frames: list[Frame] = []
    rest: list[str] = []
    for text in lines[starts[-1] + 1 :]:
        match = _FRAME.match(text)
        if text.startswith("  [Previous line repeated") and not rest:
            continue  # a recursion's summary: the frames around it tell the story
        if match and not rest:
            frames.append(Frame(match["file"], int(match["line"]), match["name"], ""))
        elif text.startswith("    ") and frames and not rest:
            if not _CARETS.match(text) and not frames[-1].line:
                last = frames[-1]
                frames[-1] = Frame(last.filename, last.lineno, last.name, text.strip())
        else:
            rest.append(text)
    return frames, rest


_HARNESS = tuple(
    {os.path.dirname(f(__file__)) + os.sep for f in (os.path.abspath, os.path.realpath)}
)


def _ours(filename: str) -> bool:
    """A frame of the harness itself (the rank's main), which no report needs to show."""
    return filename.startswith(_HARNESS)


_STDLIB = tuple(
    {os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")}
    | {os.path.abspath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")}
)
_LIBRARIES = tuple(
    {f(sysconfig.get_paths()[k]) + os.sep for k in ("purelib", "platlib")
     for f in (os.path.realpath, os.path.abspath)}
)  # fmt: skip
_PACKAGE = tuple({os.path.dirname(h.rstrip(os.sep)) + os.sep for h in _HARNESS})


def scenario_code(filename: str) -> bool:
    """A frame of the scenario's own code (or its helpers): not the harness, the stores, the
    standard library or an installed library (the bundled scenario library counts as ours)."""
    if _inspect.internal(filename) or _ours(filename) or filename.startswith(_STDLIB):
        return False
    return filename.startswith(_PACKAGE) or not filename.startswith(_LIBRARIES)


def last_frames(tb: str, count: int = FRAMES) -> tuple[list[Frame | int], list[str]]:
    """The frames of ``tb`` worth showing, and the exception's lines.

    The innermost ``count`` frames (the harness's own left out); when the innermost frame of
    scenario code is further out, it comes first and the frames between are counted (an int).
    """
    parsed, exception = _parse(tb)
    frames = [f for f in parsed if not _ours(f.filename)]
    mine = [i for i, f in enumerate(frames) if scenario_code(f.filename)]
    if not mine or len(frames) - mine[-1] <= count:
        return list(frames[-count:]), exception
    inner = frames[-(count - 1) :]
    skipped = len(frames) - mine[-1] - 1 - len(inner)
    return [frames[mine[-1]], *([skipped] if skipped else []), *inner], exception


def raised_at(tb: str) -> str:
    """``at FILE:LINE in FUNCTION``: the innermost frame of scenario code, ``from`` it when the
    exception came out of a call it made (into a store, say)."""
    frames, _ = _parse(tb)
    mine = [i for i, f in enumerate(frames) if scenario_code(f.filename)]
    if not mine:
        return ""
    frame = frames[mine[-1]]
    how = "at" if mine[-1] == len(frames) - 1 else "from"
    return f"{how} {frame.filename}:{frame.lineno} in {frame.name}"


_DUMP_START = re.compile(
    r"^(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):"
    r"|^Stack of rank \d+ \(thread\)"
)


def log_tail(rank: RankResult, count: int = LOG_LINES) -> list[str]:
    """The last lines the rank logged itself: its traceback and stack dump are shown apart."""
    lines = rank.log.splitlines()
    for i, text in enumerate(lines):
        if _DUMP_START.match(text) or f" ERROR rank {rank.rank} raised " in text:
            lines = lines[:i]
            break
    return [text for text in lines if text.strip()][-count:]


# ---------------------------------------------------------------------------- replaying


def replay_command(result: CaseResult, nodeid: str | None = None) -> str:
    """The command that runs exactly this case again, its seed included.

    With ``nodeid`` (under pytest), a pytest command; otherwise ``storeharness run
    FILE::NAME[ID]``, which selects that one case whatever other names contain it.
    """
    case = result.case
    store = "" if nodeid is None else _pytest_store(case.target)
    # a history the run recorded though the scenario does not ask for one: --history did
    forced = result.world is not None and result.world.history is not None
    recorded = " --history" if forced and not case.scenario.history else ""
    if nodeid is not None:
        return f"pytest {shlex.quote(nodeid)}{store} --harness-seed {result.seed}{recorded}"
    where = case.scenario.file or case.scenario.module
    size = (
        "" if case.world_size in case.scenario.world_sizes else f" --world-size {case.world_size}"
    )
    return (
        f"storeharness run {shlex.quote(f'{where}::{case.nodeid}')} --store "
        f"{shlex.quote(case.target)}{size} --harness-seed {result.seed}{recorded}"
    )


def _pytest_store(target: str) -> str:
    from .targets import DEFAULT

    return "" if target in DEFAULT else f" --store {shlex.quote(target)}"


# ------------------------------------------------------------------ grouping failures


_NORMALISE = (
    (re.compile(r"\brun-[0-9a-f]{6,}\b"), "run-…"),  # a run's own key namespace
    (re.compile(r"0x[0-9a-f]+"), "0x…"),
    (re.compile(r"\d+(\.\d+)?\s*s\b"), "T s"),  # times
    (re.compile(r"\d+"), "N"),  # rank numbers, world sizes, pids, ports
)


def _signature(result: CaseResult) -> tuple[str, ...]:
    texts = [result.error, *result.problems.values(), *world_problems(result)]
    out = set()
    for text in filter(None, texts):
        text = text.replace(result.case.target, "<store>")
        for pattern, replacement in _NORMALISE:
            text = pattern.sub(replacement, text)
        out.add(text)
    return tuple(sorted(out))


def group_failures(results: Iterable[CaseResult]) -> list[tuple[CaseResult, list[CaseResult]]]:
    """Failures grouped by scenario and normalised problem: ``(shown, the others like it)``."""
    groups: dict[tuple[str, tuple[str, ...]], list[CaseResult]] = {}
    for result in results:
        if not result.ok:
            key = (result.case.scenario.name, _signature(result))
            groups.setdefault(key, []).append(result)
    return [(members[0], members[1:]) for members in groups.values()]


# ------------------------------------------------------------------------- load errors


def located(exc: BaseException) -> str:
    """One line for an error raised while importing a scenario file: ``path:line: Type: msg``.

    The line is the innermost frame of the user's code (a syntax error's own position, the
    decorator of a bad definition, the line of an import that failed), not importlib's.
    """
    kind = type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: {kind}: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if not _inspect.internal(f.filename) and not _ours(f.filename)]
    if mine:
        return f"{mine[-1].filename}:{mine[-1].lineno}: {kind}: {exc}"
    return f"{kind}: {exc}"


# -------------------------------------------------------------------- JSON and JUnit XML


def case_log_dir(root: str | Path, case: Case) -> Path:
    """Where ``--log-dir`` keeps a case's rank logs: ``ROOT/<case id, made a file name>``."""
    return Path(root) / re.sub(r"[^\w.\[\]-]", "_", case.nodeid)


def json_row(result: CaseResult, log_dir: str | None = None) -> dict[str, Any]:
    """One case as ``--json`` writes it (every rank with its traceback and log tail)."""
    case = result.case
    ranks = []
    for rank in result.world or ():
        log_file = None
        if log_dir is not None:
            log_file = str(case_log_dir(log_dir, case).absolute() / f"rank-{rank.rank}.log")
        ranks.append(
            {
                "rank": rank.rank,
                "fate": str(rank.fate),
                "expected": str(result.expected.get(rank.rank)),
                "ok": rank.rank not in result.problems,
                "detail": rank.describe(),
                "problem": result.problems.get(rank.rank),
                "raised": raised_at(rank.traceback) or None,
                "traceback": rank.traceback or None,
                "log_tail": rank.log,
                "log_file": log_file,
            }
        )
    world = result.world
    return {
        "scenario": case.scenario.name,
        "id": case.nodeid,
        "module": module_path(case),
        "store": case.target,
        "workers": case.workers,
        "world_size": case.world_size,
        "outcome": result.outcome,
        "status": status(result),
        "passed": result.passed,
        "seconds": round(result.elapsed, 4),
        "seed": result.seed,
        "error": result.error or None,
        "world_problems": world_problems(result),
        "timeline": getattr(result, "timeline", "") or None,
        "faults": [str(f) for f in world.plan] if world is not None else [],
        "events": [str(e) for e in world.events] if world is not None else [],
        "ranks": ranks,
        "replay": None if result.passed else replay_command(result),
    }


def module_path(case: Case) -> str:
    """The scenario's module as a dotted path (a file loaded by path: its name, no hash)."""
    module = case.scenario.module or "scenarios"
    if module.startswith("storeharness_scenarios."):  # a file that is no importable name
        module = re.sub(r"_[0-9a-f]{8}$", "", module.removeprefix("storeharness_scenarios."))
    return module


def junit(results: Sequence[CaseResult], spent: float) -> ET.ElementTree[ET.Element]:
    """A JUnit XML report as pytest writes one: a testcase per case, classname its module."""
    words = [status(r) for r in results]
    failures = sum(1 for r, w in zip(results, words, strict=True) if not r.ok and w != "error")
    suite = ET.Element(
        "testsuite",
        name="storeharness",
        tests=str(len(results)),
        failures=str(failures),
        errors=str(words.count("error")),
        skipped=str(words.count("xfailed") + words.count("skipped")),
        time=f"{spent:.3f}",
    )
    for result, word in zip(results, words, strict=True):
        case = ET.SubElement(
            suite,
            "testcase",
            classname=module_path(result.case),
            name=result.case.nodeid,
            time=f"{result.elapsed:.3f}",
        )
        if word == "xfailed":
            ET.SubElement(case, "skipped", type="pytest.xfail", message=result.xfail)
        elif word == "skipped":
            ET.SubElement(case, "skipped", type="pytest.skip", message=result.unsupported)
        elif not result.ok:
            tag = "error" if word == "error" else "failure"
            first = result.error or next(iter(result.problems.values()), "")
            first = first or next(iter(world_problems(result)), word)
            ET.SubElement(case, tag, message=first).text = render(result)
            logs = "\n".join(
                f"--- rank {r.rank} log ---\n{r.log}" for r in result.world or () if r.log.strip()
            )
            if logs:
                ET.SubElement(case, "system-out").text = logs
    return ET.ElementTree(suite)
