"""``storeharness``: run scenarios against stores and print a report, speaking pytest's conventions.

storeharness run [PATH[::NAME[ID]]]... [--store NAME]... [--workers process|thread] [-k EXPR]
                 [--harness-seed N] [--world-size N] [--json FILE] [--junitxml FILE]
                 [--log-dir DIR] [-x] [-q] [--color yes|no|auto]
storeharness list [PATHS] [--store NAME]...
storeharness hosts check FILE|netns:N|ssh:H1,H2|local
storeharness hosts clean netns|FILE|netns:N|ssh:H1,H2|local

With no PATHS it runs the bundled scenario library; PATHS are scenario files or directories
(whose ``scenario_*.py`` files run), a file optionally followed by ``::name`` or
``::name[store-workers-size]`` to pick one scenario or case.  Every run uses the same stores as
the pytest plugin unless --store says otherwise: hash, file, tcp and prefix.

Exit codes, as pytest's: 0 all passed, 1 a case failed, 2 interrupted (Ctrl-C or SIGTERM, after
reporting what finished), 3 internal error, 4 usage error (a bad option, path, -k, store or
scenario definition), 5 no case selected.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from .. import __version__
from . import report, targets
from ._settings import SettingError, Settings, ini_file_values, resolve
from .launch.session import HostSession
from .run import (
    CaseResult,
    keyword_match,
    load_package,
    load_scenarios,
    marked_skip,
    run_case,
    select,
)
from .scenario import Case, Scenario

#: The bundled scenario library, by package name: data the CLI hands to the runner.
LIBRARY = f"{(__package__ or '').rpartition('.')[0]}.scenarios"
COMMANDS = ("run", "list", "hosts")

# Exit codes (pytest.ExitCode's values).
OK, FAILED, INTERRUPTED, INTERNAL_ERROR, USAGE_ERROR, NO_CASES = range(6)


class UsageError(Exception):
    """The command line asks for something that cannot be done; exit code 4."""


class Terminated(BaseException):
    """SIGTERM arrived: unwind as Ctrl-C does (ranks stopped, servers closed, files removed)."""


# ------------------------------------------------------------------------------ options


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="storeharness", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"storeharness {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="run scenarios and print a report (the default)")
    lst = sub.add_parser("list", help="list the scenario cases that would run")
    for p in (run, lst):
        p.add_argument(
            "paths",
            nargs="*",
            metavar="PATH",
            help="scenario files or directories, a file as FILE::NAME or FILE::NAME[ID] for one "
            "scenario or case (default: the bundled library)",
        )
        p.add_argument(
            "--store",
            action="append",
            metavar="NAME",
            help=f"store to run against (repeatable): {', '.join(targets.names())}, 'all' for "
            "every one, your own as module.path:factory, or a running server as "
            f"tcp://HOST:PORT; default: {', '.join(targets.DEFAULT)} (as the pytest plugin)",
        )
        p.add_argument("--workers", choices=["process", "thread"], help="only this worker kind")
        p.add_argument(
            "--hosts", metavar="HOSTS",
            help="run worlds across hosts: netns:N (namespaces built for the run; as root, else "
            "in a user namespace), "
            "local, ssh:h1,h2 or a hosts.toml (as pytest --hosts)",
        )  # fmt: skip
        p.add_argument("-k", metavar="EXPR", help="only cases whose id matches (as pytest -k)")
        p.add_argument("--world-size", type=int, help="override every scenario's world size")
        p.add_argument(
            "--slow", action="store_true",
            help="include scenarios marked slow (256-process worlds, 100k keys, ...)",
        )  # fmt: skip
    run.add_argument(
        "--harness-seed", dest="seed", metavar="N", help="fault-plan seed (default: per case)"
    )
    run.add_argument("--seed", dest="seed", help=argparse.SUPPRESS)  # the old spelling
    run.add_argument(
        "--time-scale", metavar="FACTOR", help="multiply every time limit (a slow machine: 2, 3)"
    )
    run.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    run.add_argument(
        "--junitxml", "--junit-xml", dest="junitxml", metavar="FILE",
        help="also write a JUnit XML report",
    )  # fmt: skip
    run.add_argument("--log-dir", metavar="DIR", help="keep every rank's log under DIR/<case>/")
    run.add_argument(
        "--history", action="store_true",
        help="record every store operation and check the history is linearizable (a failing "
        "case's HTML timeline goes under --log-dir)",
    )  # fmt: skip
    run.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    run.add_argument(
        "--xfail-strict",
        action="store_true",
        help="a case marked xfail that passes fails the run (as pytest's xfail_strict)",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="only failures and the summary line"
    )
    run.add_argument(
        "--color", choices=["yes", "no", "auto"], default="auto",
        help="colour the report: auto (on a terminal, unless NO_COLOR is set), yes, no",
    )  # fmt: skip
    hosts = sub.add_parser("hosts", help="hosts for worlds across machines")
    hosts_sub = hosts.add_subparsers(dest="hosts_command", required=True, parser_class=_Parser)
    hcheck = hosts_sub.add_parser(
        "check", help="connect to every host: versions, tools, privileges, netem, clock"
    )
    hcheck.add_argument(
        "hosts", metavar="HOSTS", help="a hosts.toml, netns:N, ssh:HOST[,HOST...] or local"
    )
    hcheck.set_defaults(func=cmd_hosts_check)
    hclean = hosts_sub.add_parser(
        "clean", help="remove what interrupted runs left: namespaces, or on hosts their "
        "processes (by run tag), nft tables, qdiscs and workdirs",
    )  # fmt: skip
    hclean.add_argument(
        "what", metavar="netns|HOSTS",
        help="netns (namespaces of killed runs), or a hosts.toml, netns:N, ssh:HOST[,HOST...], "
        "local",
    )  # fmt: skip
    hclean.set_defaults(func=cmd_hosts_clean)
    run.set_defaults(func=cmd_run)
    lst.set_defaults(func=cmd_list)
    return parser


def _with_command(argv: list[str]) -> list[str]:
    """``storeharness PATH ...`` means ``run``; a word that is neither is a usage error."""
    if not argv:
        return ["run"]
    first = argv[0]
    if first in COMMANDS or first in ("-h", "--help", "--version"):
        return argv
    if first.startswith("-") or Path(first.split("::")[0]).exists():
        return ["run", *argv]
    close = difflib.get_close_matches(first, COMMANDS, n=1)
    if close:
        raise UsageError(f"unknown command {first!r}; did you mean {close[0]!r}?")
    raise UsageError(
        f"{first!r} is neither a command ({', '.join(COMMANDS)}) nor an existing scenario path"
    )


def _settings(args: argparse.Namespace) -> Settings:
    cli = {
        "stores": ("--store", args.store),
        "seed": ("--harness-seed", getattr(args, "seed", None)),
        "time_scale": ("--time-scale", getattr(args, "time_scale", None)),
        "hosts": ("--hosts", getattr(args, "hosts", None)),
    }
    try:
        return resolve(cli=cli, ini=ini_file_values())
    except SettingError as exc:
        raise UsageError(str(exc)) from None


def _writable(path: str, option: str, directory: bool = False) -> None:
    """Refuse, before anything runs, an output path that cannot be written."""
    target = Path(path).absolute()
    folder = target if directory else target.parent
    try:
        if not directory and target.is_dir():
            raise IsADirectoryError(21, "it is a directory")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        if target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(13, "the file is read-only")
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write there ({exc.strerror})") from None


# --------------------------------------------------------------------------- collecting


def _scenarios(paths: Sequence[str]) -> list[tuple[Scenario, str | None]]:
    """The scenarios named, each with the ``::`` selector its path carried (or ``None``)."""
    found: list[tuple[Scenario, str | None]] = []
    try:
        if not paths:
            return [(sc, None) for sc in load_package(LIBRARY)]
        for raw in paths:
            path, _, selector = raw.partition("::")
            for sc in load_scenarios([path], library=LIBRARY):
                found.append((sc, selector or None))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # a scenario file that does not import: one located line
        raise UsageError(report.located(exc)) from None
    return found


def _cases(
    args: argparse.Namespace, settings: Settings, left_out: list[str] | None = None
) -> list[Case]:
    """The selected cases; each scenario (or scenario on a store) that cannot run is said on
    stderr and appended to ``left_out``, so the summary counts it as pytest counts a skip."""
    left_out = [] if left_out is None else left_out

    def leave_out(text: str) -> None:
        print(f"storeharness: {text}", file=sys.stderr)
        left_out.append(text)

    scenarios = _scenarios(args.paths)
    try:
        stores, skipped = targets.expand(settings.stores or (), targets.DEFAULT)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for why in skipped:
        print(f"storeharness: --store all skips {why}", file=sys.stderr)
    sizes = [args.world_size] if args.world_size else None
    cases: list[Case] = []
    seen = set()  # a scenario named twice (a file and its directory, say) runs once
    for sc, selector in scenarios:
        if (why_skip := marked_skip(sc.marks)) is not None:
            leave_out(f"{sc.name} skipped ({why_skip})")
            continue
        if sc.slow and not args.slow and selector is None:
            if any(_wanted(args.k, sc.name, store) for store in stores):
                leave_out(f"{sc.name} skipped (slow: run it with --slow)")
            continue
        spanning = settings.hosts is not None
        for store in stores:
            found = sc.cases([store], args.workers, sizes, spanning=spanning)
            if not found and selector in (None, sc.name) and _wanted(args.k, sc.name, store):
                leave_out(f"{sc.name} skipped on {store}: {sc.why_no_case(store, spanning)}")
            for case in found:
                key = (sc.module, sc.file, case.nodeid)
                if selector in (None, sc.name, case.nodeid) and key not in seen:
                    seen.add(key)
                    cases.append(case)
    try:
        return select(cases, args.k)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _wanted(keyword: str | None, name: str, store: str) -> bool:
    """Whether ``-k`` would select some case of ``name`` on ``store`` (bad -k: say nothing)."""
    try:
        return keyword is None or keyword_match(keyword, f"{name}[{store}]")
    except ValueError:
        return False


# ------------------------------------------------------------------------------ running


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    for option, path, directory in (("--json", args.json, False),
                                    ("--junitxml", args.junitxml, False),
                                    ("--log-dir", args.log_dir, True)):  # fmt: skip
        if path:
            _writable(path, option, directory)
    left_out: list[str] = []
    cases = _cases(args, settings, left_out)
    if not cases:
        print("storeharness: no scenario case matches (see storeharness list)", file=sys.stderr)
        return NO_CASES
    style = report.Style.choose(sys.stdout, args.color)
    results: list[CaseResult] = []
    interrupted = ""
    start = time.monotonic()
    hosts = HostSession(settings.hosts) if settings.hosts is not None else None
    if hosts is not None and hosts.unavailable:
        print(f"storeharness: {hosts.unavailable}", file=sys.stderr)
        return NO_CASES
    try:
        for case in cases:
            result = run_case(
                case, seed=settings.seed, time_scale=settings.time_scale, log_dir=args.log_dir,
                xfail_strict=args.xfail_strict, history=args.history, hosts=hosts,
            )  # fmt: skip
            results.append(result)
            if not (args.quiet and result.ok):
                print(report.case_line(result, cases, style), flush=True)
            if args.exitfirst and not result.ok:
                break
    except KeyboardInterrupt:
        interrupted = "KeyboardInterrupt (Ctrl-C)"
    except Terminated:
        interrupted = "SIGTERM"
    finally:
        if hosts is not None:
            hosts.close()  # its agents, and the namespaces it built
    spent = time.monotonic() - start
    _print_failures(results, style)
    if interrupted:
        print(style.paint(report.banner(
            f"interrupted by {interrupted} after {len(results)} of {len(cases)} cases", "!"
        ), "31"))  # fmt: skip
    print(report.summary(results, spent, style, interrupted, left_out=len(left_out)))
    if args.json:
        rows = [report.json_row(r, args.log_dir) for r in results]
        Path(args.json).write_text(json.dumps(rows, indent=2, default=repr), encoding="utf-8")
    if args.junitxml:
        tree = report.junit(results, spent)
        tree.write(args.junitxml, encoding="utf-8", xml_declaration=True)
    if interrupted:
        return INTERRUPTED
    return FAILED if any(not r.ok for r in results) else OK


def _print_failures(results: Sequence[CaseResult], style: report.Style) -> None:
    groups = report.group_failures(results)
    if not groups:
        return
    print()
    print(report.banner("FAILURES", "="))
    for shown, alike in groups:
        print(style.paint(report.banner(shown.case.nodeid), "31", "1"))
        print(report.render(shown, style=style))
        if alike:
            ids = ", ".join(r.case.id for r in alike)
            print(f"  the same failure in {len(alike)} more case(s): {ids}")
        print()


def cmd_list(args: argparse.Namespace) -> int:
    cases = _cases(args, _settings(args))
    if not cases:
        print("storeharness: no scenario case matches", file=sys.stderr)
        return NO_CASES
    seen: dict[str, list[str]] = {}
    for case in cases:
        seen.setdefault(case.scenario.name, []).append(case.id)
    for sc in {c.scenario.name: c.scenario for c in cases}.values():
        summary = " ".join(sc.doc.split("\n\n")[0].split()) if sc.doc else ""  # 1st paragraph
        print(f"{sc.name}: {summary}")
        print(f"    {', '.join(seen[sc.name])}")
    return OK


def cmd_hosts_check(args: argparse.Namespace) -> int:
    """``storeharness hosts check HOSTS``: exit 0 when every host can take part, else 1."""
    from .hosts._cli import check_command
    from .hosts.inventory import InventoryError

    try:
        return OK if check_command(args.hosts, print) else FAILED
    except InventoryError as exc:
        raise UsageError(str(exc)) from exc


def cmd_hosts_clean(args: argparse.Namespace) -> int:
    """``storeharness hosts clean netns|HOSTS``: exit 0 when every leftover was removed, else 1."""
    from .hosts._cli import clean_command

    try:
        return OK if clean_command(args.what, print) else FAILED
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


# ------------------------------------------------------------------------------ the entry


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``storeharness`` and ``python -m storeharness``; returns the exit code."""
    try:
        with _sigterm_unwinds():
            args = _parser().parse_args(_with_command(list(sys.argv[1:] if argv is None else argv)))
            if getattr(args, "world_size", None) is not None and args.world_size < 1:
                raise UsageError(f"--world-size must be >= 1, got {args.world_size}")
            return int(args.func(args))
    except UsageError as exc:
        print(f"storeharness: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except (KeyboardInterrupt, Terminated) as exc:
        why = "SIGTERM" if isinstance(exc, Terminated) else "KeyboardInterrupt"
        print(f"storeharness: interrupted by {why}", file=sys.stderr)
        return INTERRUPTED
    except Exception:
        print("storeharness: INTERNAL ERROR (a bug in storeharness; please report it)",
              file=sys.stderr)  # fmt: skip
        traceback.print_exc()
        return INTERNAL_ERROR


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the command runs (main thread only).

    So a terminated run unwinds like an interrupted one: ranks stopped, the store's server and
    proxy closed, the run's temporary directory removed.  Once raised, further SIGTERMs are
    ignored so the unwinding is not cut short (SIGKILL still ends it).  Forked ranks must not
    keep this handler (a SIGTERM fault must kill them as it does under pytest): it is reset to
    the default in every child at fork, and a child that still runs it does that itself.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()
    raised = False

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if not raised:
            raised = True
            raise Terminated()

    on_sigterm.storeharness = True  # type: ignore[attr-defined]
    _reset_sigterm_in_children()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_AT_FORK: list[bool] = []


def _reset_sigterm_in_children() -> None:
    if _AT_FORK:  # registered once per process; it cannot be unregistered
        return
    _AT_FORK.append(True)

    def after_in_child() -> None:
        if getattr(signal.getsignal(signal.SIGTERM), "storeharness", False):
            with contextlib.suppress(ValueError):  # not the main thread: the handler copes
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    os.register_at_fork(after_in_child=after_in_child)


if __name__ == "__main__":
    sys.exit(main())
