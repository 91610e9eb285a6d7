"""``storeharness``: run the scenario library against the bundled stores and report.

storeharness run [--store file|hash] [--workers process|thread] [--world-size N] [--json F]
storeharness list
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from scenarios.smoke import SCENARIOS
from stores import FileStore, HashStore, Store, TCPStore

from .world import Fate, RankResult, run_world

#: Backends the command line can open, and the worker kinds that can share them.
STORES = {"tcp": ("process", "thread"), "file": ("process", "thread"), "hash": ("thread",)}
DEFAULT_PLAN = [("tcp", "process"), ("file", "process"), ("hash", "thread")]


@contextlib.contextmanager
def _opener(store: str, tmp: str) -> Iterator[Callable[[], Store]]:
    """How each rank opens the store under test; whatever serves it lives for the run."""
    if store == "tcp":
        # The server gets a process of its own: forked ranks must not inherit a live server.
        with TCPStore("127.0.0.1", 0, is_master=True, timeout=60, server_process=True) as master:
            yield functools.partial(TCPStore, "127.0.0.1", master.port, timeout=60)
    elif store == "file":
        yield functools.partial(FileStore, str(Path(tmp) / "store"))
    else:
        yield HashStore().clone


def _plan(stores: Sequence[str] | None, workers: str | None) -> list[tuple[str, str]]:
    if not stores and not workers:
        return DEFAULT_PLAN
    plan = []
    for store in stores or list(STORES):
        kinds = STORES[store]
        if workers is not None and workers not in kinds:
            raise SystemExit(
                f"storeharness: the {store} store cannot be shared by {workers} workers "
                f"(it lives in one process); use --workers {kinds[0]}"
            )
        plan.append((store, workers or kinds[0]))
    return plan


def cmd_run(args: argparse.Namespace) -> int:
    plan = _plan(args.store, args.workers)
    rows = []
    failed = 0
    print(f"{'scenario':<22} {'store':<6} {'workers':<8} {'world':>5} {'outcome':<8} {'time':>8}")
    for name, fn in SCENARIOS.items():
        for store, workers in plan:
            with (
                tempfile.TemporaryDirectory(prefix="storeharness-") as tmp,
                _opener(store, tmp) as opener,
            ):
                start = time.monotonic()
                results = run_world(fn, args.world_size, opener, workers, args.deadline)
                spent = time.monotonic() - start
            ok = all(r.fate is Fate.RETURNED for r in results)
            failed += not ok
            outcome = "pass" if ok else "FAIL"
            world = args.world_size
            print(f"{name:<22} {store:<6} {workers:<8} {world:>5} {outcome:<8} {spent:>7.2f}s")
            if not ok:
                for r in results:
                    print(f"    {r.describe()}")
            rows.append(_row(name, store, workers, args.world_size, ok, spent, results))
    print(f"\n{len(rows) - failed} passed, {failed} failed")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=repr))
    return 1 if failed else 0


def _row(
    name: str,
    store: str,
    workers: str,
    world: int,
    ok: bool,
    spent: float,
    results: list[RankResult],
) -> dict[str, object]:
    return {
        "scenario": name,
        "store": store,
        "workers": workers,
        "world_size": world,
        "passed": ok,
        "seconds": round(spent, 4),
        "ranks": [{"rank": r.rank, "fate": str(r.fate), "detail": r.describe()} for r in results],
    }


def cmd_list(args: argparse.Namespace) -> int:
    for name, fn in SCENARIOS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<22} {doc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="storeharness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the scenarios and print a report (the default)")
    run.add_argument(
        "--store",
        action="append",
        choices=sorted(STORES),
        help="backend (repeatable; default: tcp and file with processes, hash with threads)",
    )
    run.add_argument("--workers", choices=["process", "thread"], help="how ranks run")
    run.add_argument("--world-size", type=int, default=4, help="ranks per world (4)")
    run.add_argument("--deadline", type=float, default=60.0, help="seconds per scenario run (60)")
    run.add_argument("--json", help="also write the results to this file")
    run.set_defaults(func=cmd_run)
    sub.add_parser("list", help="list the scenarios").set_defaults(func=cmd_list)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    if getattr(args, "world_size", 1) < 1:
        parser.error(f"--world-size must be >= 1, got {args.world_size}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
