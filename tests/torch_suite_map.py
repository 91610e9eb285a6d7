"""Where each case of torch's test_store.py is covered, and on which stores: docs/scenarios.md.

The table is rendered from this map and the harness's own data (target specs, scenario
definitions, conformance cases), so it cannot drift: ``tests/test_scenarios_doc.py`` fails when
docs/scenarios.md differs from :func:`render`, and says to run
``python -m tests.torch_suite_map > docs/scenarios.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from storeharness.harness import targets
from storeharness.harness.run import load_package
from storeharness.harness.targets.prefix import PrefixTarget
from storeharness.stores.conformance import TORCH_CASES

ROOT = Path(__file__).resolve().parent.parent
#: The TCP pairings of tests/stores/tcp/test_torch_tcp_suite.py, per kind of case.
TCP_SUITE = "tests/stores/tcp/test_torch_tcp_suite.py"
#: Not a store target: what those tests run on instead.
RENDEZVOUS = "our `rendezvous()` URLs; torch's compared in `tests/stores/test_rendezvous_torch.py`"
SUBCLASS = "our `Store`/`PrefixStore`, torch's `dist.Store` as the reference"


def sub(name: str) -> Ref:
    """A test of tests/stores/test_torch_subclass.py (ours beside torch's ``dist.Store``)."""
    return Ref("test", "tests/stores/test_torch_subclass.py", name, note=SUBCLASS)


@dataclass(frozen=True)
class Ref:
    """One place covering a torch case: a scenario, a torch-suite case, or a test function.

    ``kind``: ``scenario`` (``name`` in ``path``), ``case`` (a :data:`TORCH_CASES` case run by
    tests/stores/test_torch_suite.py), ``test`` (``path::name``, on the targets ``on`` or, when
    the test is about no store target, on what ``note`` says).
    """

    kind: str
    path: str
    name: str
    on: Sequence[str] | str = ()
    why_not: str = ""
    note: str = ""

    def label(self) -> str:
        where = f"test_torch_case[{self.name}-*]" if self.kind == "case" else self.name
        label = f"`{self.path}::{where}`"
        return label


def case(name: str) -> Ref:
    return Ref("case", "tests/stores/test_torch_suite.py", name)


def scenario(name: str, path: str = "scenarios/torch_suite.py") -> Ref:
    return Ref("scenario", path, name)


def tcp(name: str, on: str) -> Ref:
    """A test of the TCP suite, run on its module's ``on`` pairings (PAIRS, MASTERS, CLIENTS)."""
    return Ref("test", TCP_SUITE, name, on=on)


def test(path: str, name: str, note: str) -> Ref:
    return Ref("test", path, name, note=note)


def only(path: str, name: str, on: Sequence[str], why_not: str) -> Ref:
    return Ref("test", path, name, on=tuple(on), why_not=why_not)


@dataclass(frozen=True)
class Row:
    """torch's case ``name`` (its class), and where we cover it."""

    name: str
    torch: str
    refs: tuple[Ref, ...] = field(default_factory=tuple)


def row(name: str, torch: str, *refs: Ref) -> Row:
    return Row(name, torch, refs)


RDV = "tests/stores/test_rendezvous.py"
SUB = "tests/stores/test_torch_subclass.py"
COMPAT = "tests/stores/test_torch_compat.py"

ROWS = [
    row("set_get_check", "StoreTestBase", case("set_get_check")),
    row("compare_set", "StoreTestBase", case("compare_set")),
    row("simple_wait", "StoreTestBase", case("simple_wait")),
    row("wait", "TestMultiThreadedWait (hash, file, prefix over file, TCP, libuv TCP)",
        scenario("wait_for_a_key_another_rank_sets")),
    row("append", "StoreTestBase, TCPStoreTest", case("append")),
    row("multi_set", "StoreTestBase, TCPStoreTest", case("multi_set")),
    row("multi_get", "StoreTestBase, TCPStoreTest", case("multi_get")),
    row("numkeys_delkeys", "TCPStoreTest", case("numkeys_delkeys"),
        tcp("test_numkeys_delkeys", "PAIRS")),
    row("queues", "StoreTestBase", case("queues")),
    row("queues_bidirectional", "StoreTestBase", scenario("queues_bidirectional")),
    row("queues_nonblocking", "StoreTestBase", case("queues_nonblocking")),
    row("queues_timeout", "StoreTestBase", case("queues_timeout")),
    row("clone", "StoreTestBase", case("clone")),
    row("refcount", "FileStoreTest",
        only("tests/stores/test_file.py", "test_refcount_world_size_1_two_instances", ["file"],
             "no file to remove (reference counting is our FileStore's)")),
    row("get_underlying_store", "PrefixStoreTest", case("get_underlying_store")),
    row("underlying_non_prefix_store", "PrefixTCPStoreTest", case("underlying_non_prefix_store")),
    row("address_already_in_use", "TCPStoreTest", tcp("test_address_already_in_use", "MASTERS")),
    row("multitenancy", "TCPStoreTest", tcp("test_multitenancy", "MASTERS")),
    row("repr", "TCPStoreTest", tcp("test_repr", "PAIRS")),
    row("take_over_listen_socket", "TCPStoreTest", tcp("test_take_over_listen_socket", "MASTERS")),
    row("agent_store", "TCPStoreTest", tcp("test_agent_store", "MASTERS")),
    row("multi_worker_with_fixed_world_size", "TCPStoreTest",
        tcp("test_multi_worker_with_fixed_world_size", "PAIRS")),
    row("multi_worker_with_nonfixed_world_size", "TCPStoreTest",
        tcp("test_multi_worker_with_nonfixed_world_size", "PAIRS")),
    row("store_timeout_on_missing_clients", "TCPStoreTest",
        tcp("test_store_timeout_on_missing_clients", "MASTERS"),
        scenario("missing_clients", "scenarios/basics.py")),
    row("world_size_0_raises", "TCPStoreTest", tcp("test_world_size_0_raises", "CLIENTS")),
    row("client_connect", "TestClientProtocol", tcp("test_client_connect", "CLIENTS")),
    row("interrupt_doesnt_break_wait", "TimeoutTest", scenario("interrupt_doesnt_break_wait")),
    row("tcp_store_timeout_set", "RendezvousTCPTest",
        test(RDV, "test_tcp_store_timeout_set", RENDEZVOUS)),
    row("tcp_store_timeout_doest_break_client", "RendezvousTCPTest",
        test(RDV, "test_tcp_store_timeout_doesnt_break_client", RENDEZVOUS)),
    row("dns_timeout", "RendezvousTCPTest", test(RDV, "test_dns_timeout", RENDEZVOUS)),
    row("unknown_handler", "RendezvousTest", test(RDV, "test_unknown_handler", RENDEZVOUS)),
    row("url_with_node_params", "RendezvousTest",
        test(RDV, "test_url_with_node_params", RENDEZVOUS)),
    row("with_env_var", "InitPgWithNonUvStore", test(RDV, "test_with_env_var", RENDEZVOUS)),
    row("with_url_param", "InitPgWithNonUvStore", test(RDV, "test_with_url_param", RENDEZVOUS)),
    row("common_errors", "RendezvousFileTest, RendezvousTCPTest (and env://)",
        test(RDV, "test_file_common_errors", RENDEZVOUS),
        test(RDV, "test_tcp_common_errors", RENDEZVOUS),
        test(RDV, "test_env_common_errors", RENDEZVOUS)),
    row("nominal", "RendezvousEnvTest, RendezvousFileTest, RendezvousTCPTest",
        test(RDV, "test_env_nominal", RENDEZVOUS), test(RDV, "test_file_nominal", RENDEZVOUS),
        test(RDV, "test_file_nominal_across_processes", RENDEZVOUS),
        test(RDV, "test_tcp_nominal", RENDEZVOUS)),
    row("tcp_store_url_with_libuv", "RendezvousTCPTest",
        test(RDV, "test_tcp_store_url_with_libuv", RENDEZVOUS)),
    row("set_get (Python store)", "PythonStoreTest", sub("test_python_store_set_get")),
    row("extended_methods_fallbacks", "TestPythonStore",
        test(SUB, "test_extended_methods_fallbacks", "our `PrefixStore` over a core-only store")),
    row("has_extended_api_passthrough", "TestPythonStore",
        sub("test_has_extended_api_passthrough")),
    row("has_extended_api_roundtrip", "TestPythonStore",
        sub("test_has_extended_api_roundtrip")),
    row("append_roundtrip", "TestPythonStore", sub("test_append_roundtrip")),
    row("multi_get_roundtrip", "TestPythonStore", sub("test_multi_get_roundtrip")),
    row("multi_set_roundtrip", "TestPythonStore", sub("test_multi_set_roundtrip")),
    row("optional_methods_fail", "TestPythonStore",
        sub("test_optional_methods_fail")),
    row("init_pg_and_rpc_with_same_file", "FileStoreTest",
        test(COMPAT, "test_init_pg_and_rpc_with_same_file", "a gloo process group over our "
             "FileStore (needs torch)")),
    row("init_pg_and_rpc_with_same_socket", "TCPStoreTest",
        test(COMPAT, "test_init_pg_and_rpc_with_same_socket", "a gloo process group over our "
             "TCPStore (needs torch)")),
]  # fmt: skip


# ------------------------------------------------------------------------------ deriving


def _tcp_pairs(group: str) -> list[str]:
    """The targets a TCP-suite test runs on (its module's PAIRS, MASTERS or CLIENTS)."""
    module = importlib.import_module(TCP_SUITE.removesuffix(".py").replace("/", "."))
    return [p.target for p in getattr(module, group)]


def _why_not_tcp(target: str, group: str) -> str:
    """Why a TCP-suite test of ``group`` does not run on ``target``."""
    module = importlib.import_module(TCP_SUITE.removesuffix(".py").replace("/", "."))
    pairs = {p.target: p for p in module.PAIRS}
    if target in pairs:  # a TCP pairing whose master (or client) kind another one runs
        side = "master" if group == "MASTERS" else "client"
        kind = getattr(pairs[target], side)
        same = next(p.target for p in getattr(module, group) if getattr(p, side) == kind)
        return f"a {side}-only case: its {side} runs as {same}"
    if isinstance(targets.get(target), PrefixTarget):
        return "a PrefixStore, not a TCPStore (a TCPStore constructor's case)"
    return "not a TCPStore (a TCPStore constructor's case)"


def _scenarios() -> dict[str, object]:
    return {sc.name: sc for sc in load_package("storeharness.scenarios")}


def coverage(ref: Ref) -> tuple[list[str], dict[str, list[str]]]:
    """The targets ``ref`` runs on, and the others grouped by why not (empty for non-targets)."""
    names = list(targets.builtin())  # not entry points a machine happens to have
    on: list[str] = []
    not_on: dict[str, list[str]] = {}

    def skip(target: str, why: str) -> None:
        not_on.setdefault(why.removeprefix(f"{target} "), []).append(target)

    for name in names:
        spec = targets.get(name).spec
        if ref.kind == "scenario":
            sc = _scenarios()[ref.name]
            if sc.cases([name]):  # type: ignore[attr-defined]
                on.append(name)
            else:
                skip(name, sc.why_no_case(name))  # type: ignore[attr-defined]
        elif ref.kind == "case":
            needs = next(c for c in TORCH_CASES if c.name == ref.name).requires
            lacking = spec.lacks(needs)
            if lacking:
                skip(name, f"lacks {', '.join(sorted(lacking))}")
            else:
                on.append(name)
        elif isinstance(ref.on, str):  # a TCP-suite group
            allowed = _tcp_pairs(ref.on)
            if name in allowed:
                on.append(name)
            else:
                skip(name, _why_not_tcp(name, ref.on))
        elif ref.on:
            if name in ref.on:
                on.append(name)
            else:
                skip(name, ref.why_not)
    return on, not_on


def _cells(ref: Ref) -> tuple[str, str]:
    if ref.note:
        return ref.note, "—"
    on, not_on = coverage(ref)
    why = "; ".join(f"{', '.join(ts)}: {reason}" for reason, ts in not_on.items())
    return ", ".join(on), why or "—"


def render() -> str:
    """docs/scenarios.md, as it must read."""
    lines = [
        "# torch's store tests, and where we cover them",
        "",
        "Every case of PyTorch's `test/distributed/test_store.py` (the names of issue 12), what",
        "covers it here, the stores it runs on, and for every store that cannot run it, why (the",
        "capability its target spec lacks).  Stores are the harness's targets (`--store all`",
        "order: ours, then torch's and the interop pairings, which run where torch is",
        "installed).  Where a store cannot take a case the run skips it saying the same reason;",
        "nothing is left out silently.  Generated by `python -m tests.torch_suite_map >",
        "docs/scenarios.md`; `tests/test_scenarios_doc.py` fails when this file drifts.",
        "",
        "Scenarios (`scenarios/`) are the cases that need several ranks, processes or signals;",
        "`test_torch_case[NAME-*]` runs `stores.conformance.TORCH_CASES` (torch's single-store",
        "cases, as torch asserts them) on every target, torch's own stores included; the TCP",
        "constructor cases run on each TCP pairing of a master kind and a client kind.",
        "",
        "| torch's test | its class | covered by | runs on | cannot run on (why) |",
        "|---|---|---|---|---|",
    ]
    for r in ROWS:
        for i, ref in enumerate(r.refs):
            on, why = _cells(ref)
            label = ref.label()
            first = (f"`{r.name}`", r.torch) if i == 0 else ("", "")
            lines.append(f"| {first[0]} | {first[1]} | {label} | {on} | {why} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
