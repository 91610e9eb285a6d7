"""torch's TCPStore client and ours in one world, on one server (ours or torch's).

Jobs mix clients: a launcher on our store, a trainer on torch's.  Here the even ranks use the
client the target hands out and the odd ranks open the *other* one (torch's if the target's is
ours, ours if it is torch's) to the same server, in the same run namespace; together they
count, elect a leader, meet at a barrier and read each other's keys.  Only the interop and
torch targets run it (it needs torch): ``storeharness run --store torch-client --store
ours-on-torch scenarios/mixed.py``.
"""

from __future__ import annotations

from storeharness import RankContext, WorldResult, all_agree, scenario
from storeharness.stores import PrefixStore, Store, TCPStore


def _other_client(ctx: RankContext) -> tuple[Store, str]:
    """A handle on the same server and namespace through the other kind of client."""
    # imported here, not at the top: the library loads where torch is not installed
    from storeharness.stores.torch_adapter import TorchStore, torch_tcp_client

    namespace = ctx.store
    assert isinstance(namespace, PrefixStore)
    raw, timeout = namespace.underlying_store, namespace.timeout.total_seconds()
    if isinstance(raw, TCPStore):
        other: Store = torch_tcp_client(raw.host, raw.port, timeout)
    else:
        assert isinstance(raw, TorchStore), f"not a TCPStore client: {raw!r}"
        other = TCPStore(raw.torch_store.host, raw.torch_store.port, timeout=timeout)
    return PrefixStore(namespace.prefix, other, _owns_store=True), _kind(other)


def _kind(store: Store) -> str:
    return "ours" if isinstance(store, TCPStore) else "torch"


def both_kinds_took_part(world: WorldResult) -> str | None:
    """A world check: ranks on each kind of client took part."""
    kinds = {k for r in world for k in (r.value or {}).get("kinds", [])}
    return None if kinds == {"ours", "torch"} else f"the clients that took part: {sorted(kinds)}"


@scenario(
    world_size=[2, 4],
    workers="both",
    stores=["torch-client", "ours-on-torch", "ours-on-torch-legacy", "torch-tcp"],
    check=[all_agree(), both_kinds_took_part],
)
def torch_and_our_clients_in_one_world(ctx: RankContext) -> dict[str, object]:
    """Half the ranks on torch's client, half on ours, one server: they count together, agree
    on one leader, pass one barrier and read every rank's key."""
    n = ctx.world_size
    assert n is not None
    if ctx.rank % 2:
        store, kind = _other_client(ctx)
    else:
        assert isinstance(ctx.store, PrefixStore)
        store, kind = ctx.store, _kind(ctx.store.underlying_store)
    try:
        store.set(f"client/{ctx.rank}", kind)
        store.add("count", 1)
        leader = store.compare_set("leader", "", str(ctx.rank)).decode()
        store.barrier("met", n)
        kinds = [k.decode() for k in store.multi_get([f"client/{r}" for r in range(n)])]
        return {"count": int(store.get("count")), "leader": leader, "kinds": sorted(set(kinds))}
    finally:
        if store is not ctx.store:
            store.close()
