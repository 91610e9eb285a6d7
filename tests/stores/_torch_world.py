"""Real torch process groups over our stores, one process per rank, for test_torch_compat.

Ranks fork from a forkserver that has imported torch once (importing torch costs about 3 s per
process here; forking the test worker instead would copy whatever threads other tests left in
it).  :func:`run_ranks` starts them, collects one result per rank through a pipe, and leaves
nothing behind: ranks still alive at the deadline or after a failure are killed and reaped.

The rank functions live here, not in the test module, so the forkserver's children unpickle them
without importing pytest's test module.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing import forkserver
from multiprocessing.connection import Connection, wait
from typing import Any

#: What each rank preloads in the forkserver: torch's process groups and RPC, and our stores.
PRELOAD = ["torch.distributed.rpc", "storeharness.stores", "storeharness.stores.torch_compat"]
#: Every store operation and every torch timeout in the ranks (seconds): long enough for a
#: loaded 2-core machine, short enough that a broken world fails the test rather than hangs it.
OP_TIMEOUT = 30.0

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(PRELOAD)


def stop_forkserver() -> None:
    """Stop the forkserver and wait for it (else it ends when this process does).

    ``multiprocessing.forkserver._forkserver._stop`` is private (CPython's own tests use it); if
    a Python lacks it the forkserver simply lives until this process exits.  The next
    :func:`run_ranks` starts a new one.
    """
    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        stop()


def context() -> Any:
    """The multiprocessing context the ranks start from (for Events and Values they share)."""
    return _CTX


class RankFailed(AssertionError):
    """A rank raised, died, or did not finish in time; the message has every rank's story."""


def run_ranks(
    fn: Callable[..., dict[str, Any]], world_size: int, args: tuple[Any, ...], time_limit: float
) -> list[dict[str, Any]]:
    """Run ``fn(rank, world_size, *args)`` in one process per rank; return their results.

    Raises :class:`RankFailed` naming each rank's exception (with its traceback), exit code, or
    "still running at the deadline".  Every rank process is gone when this returns.
    """
    procs, conns = [], []
    try:
        for rank in range(world_size):
            ours, theirs = _CTX.Pipe(duplex=False)
            proc = _CTX.Process(
                target=_rank_main, args=(fn, rank, world_size, args, theirs), daemon=True
            )
            proc.start()
            theirs.close()
            procs.append(proc)
            conns.append(ours)
        results: dict[int, Any] = {}
        deadline = time.monotonic() + time_limit
        pending = dict(enumerate(conns))
        while pending and time.monotonic() < deadline:
            ready = wait(list(pending.values()), timeout=deadline - time.monotonic())
            for conn in ready:
                rank = next(r for r, c in pending.items() if c is conn)
                del pending[rank]
                try:
                    results[rank] = conn.recv()  # type: ignore[union-attr,call-arg]
                except EOFError:
                    results[rank] = ("died", None)
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        problems = []
        for rank, proc in enumerate(procs):
            status, value = results.get(rank, ("timeout", None))
            if status == "ok" and proc.exitcode == 0:
                continue
            if status == "error":
                problems.append(f"rank {rank} raised:\n{value}")
            elif status == "timeout":
                problems.append(f"rank {rank} still running after {time_limit} s")
            else:
                problems.append(f"rank {rank} ended with exit code {proc.exitcode} ({status})")
        if problems:
            raise RankFailed("\n".join(problems))
        return [results[r][1] for r in range(world_size)]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        for conn in conns:
            conn.close()


def _rank_main(
    fn: Callable[..., dict[str, Any]],
    rank: int,
    world_size: int,
    args: tuple[Any, ...],
    conn: Connection,
) -> None:
    # Loopback only: gloo (init_process_group's groups and RPC's own) and TensorPipe pick their
    # interface from these; a bogus name makes gloo fail, so they are known to be read.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    os.environ["TP_SOCKET_IFNAME"] = "lo"
    result: tuple[str, Any]
    try:
        result = ("ok", fn(rank, world_size, *args))
    except BaseException:
        result = ("error", traceback.format_exc())
    conn.send(result)
    conn.close()


# --------------------------------------------------------------------------- our stores, per rank


def file_stores(path: str, world_size: int, rank: int) -> tuple[Any, Any]:
    """Two handles on one FileStore file (RPC's, the process group's); the last of all ranks'
    handles to close removes the file."""
    from storeharness.stores import FileStore

    return tuple(FileStore(path, 2 * world_size, OP_TIMEOUT) for _ in range(2))  # type: ignore[return-value]


def hash_stores(rank: int) -> tuple[Any, Any]:
    """Two handles on one HashStore: a world of one process (HashStore does not cross them)."""
    from storeharness.stores import HashStore

    store = HashStore(OP_TIMEOUT)
    return store, store.clone()


def tcp_stores(port: Any, published: Any, world_size: int, rank: int) -> tuple[Any, Any]:
    """Rank 0 is the TCPStore master (port 0, published to the others); every rank's RPC and
    process group talk to that one server socket, each through a connection of its own."""
    from storeharness.stores import TCPStore

    if rank == 0:
        master = TCPStore("127.0.0.1", 0, world_size, True, OP_TIMEOUT, wait_for_workers=False)
        port.value = master.port
        published.set()
        return master, TCPStore("127.0.0.1", master.port, None, False, OP_TIMEOUT)
    if not published.wait(OP_TIMEOUT):
        raise TimeoutError(f"rank 0 did not publish its TCPStore port within {OP_TIMEOUT} s")
    return tuple(  # type: ignore[return-value]
        TCPStore("127.0.0.1", port.value, world_size if i == 0 else None, False, OP_TIMEOUT)
        for i in range(2)
    )


# --------------------------------------------------------------------------- rank functions


def _leave(store: Any, rank: int, world_size: int) -> None:
    """Close ``store`` once no rank needs it: rank 0 (which may serve it) closes last.

    The other ranks count out with a request-reply each (their last use of the server), and
    the last of them releases rank 0.
    """
    if rank == 0:
        if world_size > 1:
            store.wait(["storeharness-test/all-left"])
    elif store.add("storeharness-test/left", 1) == world_size - 1:
        store.set("storeharness-test/all-left", "1")
    store.close()


def pg_and_rpc(
    rank: int, world_size: int, open_stores: Callable[[int], tuple[Any, Any]]
) -> dict[str, Any]:
    """torch's ``test_init_pg_and_rpc_with_same_*`` on ``world_size`` ranks, over our stores.

    RPC first, then a gloo process group, over two handles on the same store (the same file, or
    the same server socket): an all_reduce, a barrier, an ``rpc_sync`` to the next rank, and then
    the keys both wrote, read back from our store.  The process group is destroyed and its
    handle closed while RPC still runs, as in torch's test, before RPC shuts down.
    """
    import torch
    import torch.distributed as dist
    import torch.distributed.rpc as _rpc

    from storeharness.stores.torch_compat import as_torch_store, torch_init_method

    rpc: Any = _rpc  # partly untyped
    limit = timedelta(seconds=OP_TIMEOUT)
    rpc_store, pg_store = open_stores(rank)
    opts = rpc.TensorPipeRpcBackendOptions(
        init_method=torch_init_method(rpc_store), rpc_timeout=OP_TIMEOUT
    )
    rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world_size, rpc_backend_options=opts)
    dist.init_process_group(
        "gloo", store=as_torch_store(pg_store), rank=rank, world_size=world_size, timeout=limit
    )
    tensor = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
    dist.all_reduce(tensor)
    dist.barrier()
    peer = (rank + 1) % world_size
    peer_pid = rpc.rpc_sync(f"worker{peer}", os.getpid)
    summed = rpc.rpc_sync(f"worker{peer}", torch.add, args=(torch.ones(2), rank))
    keys = sorted(pg_store.list_keys())
    dist.destroy_process_group()
    path = getattr(pg_store, "path", None)
    pg_store.close()
    after_pg = os.path.exists(path) if path is not None else None
    rpc.shutdown()  # its own store barrier: the last rank out may still be using the store
    _leave(rpc_store, rank, world_size)
    return {
        "pid": os.getpid(),
        "all_reduce": tensor.tolist(),
        "peer_pid": peer_pid,
        "rpc_sum": summed.tolist(),
        "keys": keys,
        "exists_after_pg": after_pg,
    }


def gives_up(rank: int, world_size: int) -> dict[str, Any]:
    """Rank 1 raises; the others succeed (for run_ranks' own test)."""
    if rank == 1:
        raise ValueError("rank 1 gives up")
    return {"pid": os.getpid()}


def blocks_forever(rank: int, world_size: int, pid_dir: str) -> dict[str, Any]:
    """Record this rank's pid, then block until killed (for run_ranks' own test)."""
    with open(os.path.join(pid_dir, str(rank)), "w") as f:
        f.write(str(os.getpid()))
    threading.Event().wait()
    return {}


def pg_with_a_missing_rank(
    rank: int, world_size: int, open_stores: Callable[[int], tuple[Any, Any]], limit: float
) -> dict[str, Any]:
    """Rank 0 calls ``init_process_group(timeout=limit)``; no other rank ever does.

    Returns what rank 0 got: the exception's class, its cause's class, and how long it took.
    """
    import torch.distributed as dist

    from storeharness.stores.torch_compat import as_torch_store

    if rank != 0:
        return {}
    rpc_store, pg_store = open_stores(rank)
    start = time.monotonic()
    outcome: dict[str, Any]
    try:
        dist.init_process_group(
            "gloo",
            store=as_torch_store(pg_store),
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=limit),
        )
    except Exception as exc:
        outcome = {
            "error": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "cause": type(exc.__cause__).__name__,
            "message": str(exc),
        }
    else:
        outcome = {"error": None}
        dist.destroy_process_group()
    outcome["elapsed"] = time.monotonic() - start
    pg_store.close()
    rpc_store.close()
    return outcome
