"""Big values and many keys: what checkpoints' metadata and large worlds put in a store.

- one 64 MiB value, written by one rank and read back whole, byte for byte, by every other;
- 100,000 keys written in batches with ``multi_set`` and all read back with ``multi_get``, and
  counted by ``num_keys``.

Both are slow on a loaded machine, so default runs leave them out (``--slow``).  torch's libuv
server refuses values over 8 MiB (it drops the connection): on the targets using it the large
value case is an expected failure, and fails at once with the server's refusal.
"""

from __future__ import annotations

import hashlib

from storeharness import RankContext, all_agree, scenario

MIB = 1 << 20
#: The value's size: 64 MiB.
LARGE = 64 * MIB
#: How many keys, and how many a single multi_set/multi_get carries.
KEYS = 100_000
BATCH = 10_000
TORCH_LIMIT = "torch's libuv TCPStore server refuses a value over 8 MiB and drops the connection"


def _pattern(size: int) -> bytes:
    """``size`` bytes that are not all alike (a store that mangles any part shows it)."""
    block = bytes(range(256)) * (MIB // 256)
    return (block * (size // MIB + 1))[:size]


@scenario(
    world_size=3,
    workers="both",
    slow=True,
    time_limit=300,
    op_timeout=120,
    check=all_agree(),
    xfail={
        "torch-tcp": TORCH_LIMIT,
        "ours-on-torch": TORCH_LIMIT,
    },
)
def large_value_64mib(ctx: RankContext) -> str:
    """Rank 0 sets a 64 MiB value; every rank gets it back whole and equal (by its SHA-256)."""
    n = ctx.world_size
    assert n is not None
    if ctx.rank == 0:
        value = _pattern(LARGE)
        ctx.store.set("large", value)
        ctx.store.set("large-sha256", hashlib.sha256(value).hexdigest())
        del value
        ctx.point("published")
    else:  # a rank 0 that fails to publish ends the case at once, not by a timeout
        ctx.wait_for(0, "published")
    got = ctx.store.get("large")
    assert len(got) == LARGE, f"rank {ctx.rank} got {len(got)} bytes, not {LARGE}"
    digest = hashlib.sha256(got).hexdigest()
    assert digest == ctx.store.get("large-sha256").decode(), f"rank {ctx.rank}: corrupted"
    return digest


@scenario(
    world_size=2,
    workers="both",
    slow=True,
    time_limit=300,
    op_timeout=120,
)
def many_keys_100k(ctx: RankContext) -> int:
    """Rank 0 writes 100,000 keys in batches; rank 1 reads every one back and the store counts
    at least that many keys."""
    keys = [f"k/{i:06d}" for i in range(KEYS)]
    if ctx.rank == 0:
        for start in range(0, KEYS, BATCH):
            batch = keys[start : start + BATCH]
            ctx.store.multi_set(batch, [k.encode() for k in batch])
        ctx.store.set("written", "1")
        ctx.store.wait(["read"])
        return ctx.store.num_keys()
    ctx.store.wait(["written"])
    for start in range(0, KEYS, BATCH):
        batch = keys[start : start + BATCH]
        got = ctx.store.multi_get(batch)
        bad = [k for k, v in zip(batch, got, strict=True) if v != k.encode()]
        assert not bad, f"{len(bad)} keys came back wrong, first {bad[:3]}"
    count = ctx.store.num_keys()
    assert count >= KEYS, f"num_keys() is {count} after {KEYS} keys were written"
    ctx.store.set("read", "1")
    return count
