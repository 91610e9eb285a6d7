"""``storeharness``: run scenarios against stores and print a report.

storeharness run [PATHS] [--store NAME]... [--workers process|thread] [-k EXPR] [--seed N]
                 [--world-size N] [--json FILE] [--junit-xml FILE] [-x] [-q]
storeharness list [PATHS] [--store NAME]...

With no PATHS it runs the bundled scenario library against our TCPStore; scenario files you
name run against every bundled store (hash, file, tcp, prefix) unless --store says otherwise.
Exit code: 0 all passed, 1 a case failed, 2 bad usage, 5 nothing selected (as pytest).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from . import targets
from ._settings import SettingError, Settings, ini_file_values, resolve
from .run import CaseResult, load_package, load_scenarios, run_case, select
from .scenario import Case, ScenarioError

#: The bundled scenario library, by package name: data the CLI hands to the runner.
LIBRARY = f"{(__package__ or '').rpartition('.')[0]}.scenarios"
#: The bundled library runs on our TCPStore unless told otherwise (scenario files you name run
#: on every one of our stores).
LIBRARY_STORES = ("tcp",)


def _settings(args: argparse.Namespace) -> Settings:
    cli = {
        "stores": ("--store", args.store),
        "seed": ("--seed", getattr(args, "seed", None)),
        "time_scale": ("--time-scale", getattr(args, "time_scale", None)),
    }
    try:
        return resolve(cli=cli, ini=ini_file_values())
    except SettingError as exc:
        raise SystemExit(f"storeharness: {exc}") from None


def _cases(args: argparse.Namespace, settings: Settings) -> list[Case]:
    try:
        if args.paths:
            scenarios = load_scenarios(args.paths, library=LIBRARY)
        else:
            scenarios = load_package(LIBRARY)
    except (FileNotFoundError, ScenarioError, ImportError) as exc:
        raise SystemExit(f"storeharness: {exc}") from None
    default = targets.DEFAULT if args.paths else LIBRARY_STORES
    try:
        stores, skipped = targets.expand(settings.stores or (), default)
    except ValueError as exc:
        raise SystemExit(f"storeharness: {exc}") from None
    for why in skipped:
        print(f"storeharness: --store all skips {why}", file=sys.stderr)
    sizes = [args.world_size] if getattr(args, "world_size", None) else None
    cases = [c for sc in scenarios for c in sc.cases(stores, args.workers, sizes)]
    try:
        return select(cases, args.k)
    except ValueError as exc:
        raise SystemExit(f"storeharness: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cases = _cases(args, settings)
    if not cases:
        print("storeharness: no scenario case matches (see storeharness list)", file=sys.stderr)
        return 5
    results: list[CaseResult] = []
    start = time.monotonic()
    width = max(len(c.scenario.name) for c in cases)
    for i, case in enumerate(cases, 1):
        if not args.quiet:
            print(f"[{i}/{len(cases)}] {case.nodeid} ...", file=sys.stderr, flush=True)
        result = run_case(case, seed=settings.seed, time_scale=settings.time_scale)
        results.append(result)
        if not args.quiet:
            print(f"[{i}/{len(cases)}] {case.nodeid} {result.outcome}", file=sys.stderr)
        if args.exitfirst and not result.ok(args.xfail_strict):
            break
    spent = time.monotonic() - start
    header = f"{'scenario':<{width}}  {'store':<10} {'workers':<8} {'world':>5}  outcome  time"
    print(header)
    print("-" * len(header))
    for r in results:
        c = r.case
        print(
            f"{c.scenario.name:<{width}}  {c.target:<10} {c.workers:<8} {c.world_size:>5}  "
            f"{r.outcome:<7} {r.elapsed:>5.2f}s"
        )
    failed = [r for r in results if not r.ok(args.xfail_strict)]
    for r in failed:
        print()
        print(r.report())
    xfailed = sum(r.outcome == "xfail" for r in results)
    xpassed = sum(r.outcome == "XPASS" for r in results)
    passed = len(results) - len(failed) - xfailed - (xpassed if not args.xfail_strict else 0)
    known = f", {xfailed} xfailed" if xfailed else ""
    known += f", {xpassed} xpassed" if xpassed else ""
    print(f"\n{passed} passed, {len(failed)} failed{known} in {spent:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([_row(r) for r in results], indent=2, default=repr))
    if args.junit_xml:
        _junit(results, spent).write(args.junit_xml, encoding="utf-8", xml_declaration=True)
    return 1 if failed else 0


def _row(r: CaseResult) -> dict[str, object]:
    ranks = []
    if r.world is not None:
        for rank in r.world:
            ranks.append(
                {
                    "rank": rank.rank,
                    "fate": str(rank.fate),
                    "expected": str(r.expected[rank.rank]),
                    "ok": rank.rank not in r.problems,
                    "detail": rank.describe(),
                    "problem": r.problems.get(rank.rank),
                }
            )
    return {
        "scenario": r.case.scenario.name,
        "id": r.case.nodeid,
        "store": r.case.target,
        "workers": r.case.workers,
        "world_size": r.case.world_size,
        "outcome": r.outcome,
        "passed": r.passed,
        "seconds": round(r.elapsed, 4),
        "seed": r.seed,
        "error": r.error or None,
        "events": [str(e) for e in r.world.events] if r.world is not None else [],
        "ranks": ranks,
        "replay": None if r.passed else r.replay(),
    }


def _junit(results: list[CaseResult], spent: float) -> ET.ElementTree:
    failures = sum(1 for r in results if not r.passed and not r.error)
    errors = sum(1 for r in results if r.error)
    suite = ET.Element(
        "testsuite",
        name="storeharness",
        tests=str(len(results)),
        failures=str(failures),
        errors=str(errors),
        skipped="0",
        time=f"{spent:.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=r.case.scenario.module or "scenarios",
            name=r.case.nodeid,
            time=f"{r.elapsed:.3f}",
        )
        if not r.passed:
            tag = "error" if r.error else "failure"
            first = r.error or next(iter(r.problems.values()), "failed")
            ET.SubElement(case, tag, message=first).text = r.report()
            logs = "\n".join(f"--- rank {k} log ---\n{v}" for k, v in r.logs().items())
            if logs:
                ET.SubElement(case, "system-out").text = logs
    return ET.ElementTree(suite)


def cmd_list(args: argparse.Namespace) -> int:
    cases = _cases(args, _settings(args))
    seen: dict[str, list[str]] = {}
    for case in cases:
        seen.setdefault(case.scenario.name, []).append(case.id)
    for sc in {c.scenario.name: c.scenario for c in cases}.values():
        summary = sc.doc.splitlines()[0] if sc.doc else ""
        print(f"{sc.name}: {summary}")
        print(f"    {', '.join(seen[sc.name])}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``storeharness`` and ``python -m storeharness``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="storeharness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run scenarios and print a report (the default)")
    lst = sub.add_parser("list", help="list the scenario cases that would run")
    for p in (run, lst):
        p.add_argument("paths", nargs="*", help="scenario files or directories (default: bundled)")
        p.add_argument(
            "--store",
            action="append",
            metavar="NAME",
            help=f"store to run against (repeatable): {', '.join(targets.names())}, 'all' for "
            "every one, your own as module.path:factory, or a running server as "
            "tcp://HOST:PORT; default: tcp for the bundled library, "
            f"{', '.join(targets.DEFAULT)} for scenario files you name",
        )
        p.add_argument("--workers", choices=["process", "thread"], help="only this worker kind")
        p.add_argument("-k", metavar="EXPR", help="only cases whose id matches (as pytest -k)")
        p.add_argument("--world-size", type=int, help="override every scenario's world size")
    run.add_argument("--seed", help="fault-plan seed (default: stable per case)")
    run.add_argument(
        "--time-scale", metavar="FACTOR", help="multiply every time limit (a slow machine: 2, 3)"
    )
    run.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    run.add_argument("--junit-xml", metavar="FILE", help="also write a JUnit XML report")
    run.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    run.add_argument(
        "--xfail-strict",
        action="store_true",
        help="a case marked xfail that passes fails the run (as pytest's xfail_strict)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    run.set_defaults(func=cmd_run)
    lst.set_defaults(func=cmd_list)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "list", "-h", "--help"):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    if args.world_size is not None and args.world_size < 1:
        parser.error(f"--world-size must be >= 1, got {args.world_size}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
