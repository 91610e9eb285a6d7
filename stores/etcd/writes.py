"""EtcdStore's writes: each one etcd request, applied at most once however often it is resent.

A request whose reply is lost (the connection broke after etcd committed it) is resent; without
care, the resend applies it a second time (an ``add`` counted twice), or answers for a state
that other clients changed since (a ``compare_set`` that wrote, then says it did not, because
another client replaced the value before the resend looked).  So every write runs inside
:meth:`EtcdStore._once`: its txn also puts a per-thread marker to the call's sequence number,
and is guarded by that marker, so the resent request applies nothing and says so; the call
then answers what its first attempt did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._types import KeyLike, ValueLike, as_key, as_value, check_amount, next_counter
from ._requests import Requests

__all__ = ["Writes"]

#: Puts per ``multi_set`` txn: etcd's default ``--max-txn-ops`` (128), less the marker's put.
MAX_PUTS = 128 - 1


class Writes(Requests):
    """The write operations of :class:`EtcdStore` (a mixin over its request helpers)."""

    def set(self, key: KeyLike, value: ValueLike) -> None:
        k = key if type(key) is str else as_key(key)
        v = value if type(value) is bytes else as_value(value)
        op = self._op("set", [k])
        stored = self._layout.key(k)
        self._once(op, lambda seq: self.rpc.TxnRequest(success=[self._put(stored, v),
                                                                 self._mark(seq)]))  # fmt: skip

    def multi_set(self, keys: Sequence[KeyLike], values: Sequence[ValueLike]) -> None:
        """Set every key; all-or-nothing per 127 keys (etcd's txn limit), one revision each."""
        names, data = self._pairs(keys, values)
        op = self._op("multi_set", names)
        latest = dict(zip(names, data, strict=True))  # etcd rejects a key twice in one txn
        items = list(latest.items())
        for i in range(0, len(items), MAX_PUTS):
            puts = [self._put(self._layout.key(k), v) for k, v in items[i : i + MAX_PUTS]]
            self._once(op, lambda seq, p=puts: self.rpc.TxnRequest(  # type: ignore[misc]
                success=[*p, self._mark(seq)]))  # fmt: skip

    def _swap(self, name: str, k: str, update: Callable[[bytes | None], bytes]) -> bytes:
        """Replace ``k``'s value by ``update(old)`` atomically; returns the value written.

        A compare-and-swap on the key's ``mod_revision``; a lost race reads the winner's value
        in the same request and tries again.
        """
        op = self._op(name, [k])
        key = self._layout.key(k)
        got = self._call(op, "Range", lambda: self.rpc.RangeRequest(key=key))
        kv = got.kvs[0] if got.kvs else None
        while True:
            new = update(None if kv is None else kv.value)
            seen = 0 if kv is None else kv.mod_revision
            resp = self._once(
                op,
                lambda seq, seen=seen, new=new: self.rpc.TxnRequest(  # type: ignore[misc]
                    compare=[self._compare(key, "MOD", mod_revision=seen)],
                    success=[self._put(key, new), self._mark(seq)],
                    failure=[self._range(key)]),
            )  # fmt: skip
            if resp is None or resp.succeeded:  # (None: a resent attempt found it applied)
                return new
            kvs = resp.responses[0].response_range.kvs
            kv = kvs[0] if kvs else None

    def add(self, key: KeyLike, amount: int) -> int:
        k = key if type(key) is str else as_key(key)
        check_amount(amount, k)
        return int(self._swap("add", k, lambda old: str(next_counter(old, amount, k)).encode()))

    def append(self, key: KeyLike, value: ValueLike) -> None:
        k = as_key(key)
        tail = as_value(value)
        self._swap("append", k, lambda old: (old or b"") + tail)

    def has_extended_api(self) -> bool:
        return True

    def compare_set(self, key: KeyLike, expected: ValueLike, desired: ValueLike) -> bytes:
        """c10d's compare_set in one txn: ``desired`` when written; else the current value, or
        ``expected`` itself for an absent key (torch's quirk)."""
        k = as_key(key)
        exp = as_value(expected, "expected")
        new = as_value(desired, "desired")
        op = self._op("compare_set", [k])
        stored = self._layout.key(k)
        r = self.rpc

        def body(seq: bytes) -> Any:
            write = [self._put(stored, new), self._mark(seq)]
            if exp:  # a VALUE compare on an absent key is false: nothing written, as torch
                return r.TxnRequest(compare=[self._compare(stored, "VALUE", value=exp)],
                                    success=write, failure=[self._range(stored)])  # fmt: skip
            # "absent or empty": create, else (nested) overwrite an empty value, else read
            empty = r.TxnRequest(compare=[self._compare(stored, "VALUE", value=b"")],
                                 success=write, failure=[self._range(stored)])  # fmt: skip
            absent = self._compare(stored, "CREATE", create_revision=0)
            return r.TxnRequest(compare=[absent], success=write,
                                failure=[r.RequestOp(request_txn=empty)])  # fmt: skip

        resp = self._once(op, body)
        if resp is None or resp.succeeded:  # (None: a resent attempt found it written)
            return new
        if not exp:
            resp = resp.responses[0].response_txn
            if resp.succeeded:
                return new
        kvs = resp.responses[0].response_range.kvs
        return bytes(kvs[0].value) if kvs else exp

    def delete_key(self, key: KeyLike) -> bool:
        """Remove ``key``'s value; ``True`` iff it had one (a resend after a lost reply too)."""
        k = as_key(key)
        op = self._op("delete_key", [k])
        stored = self._layout.key(k)
        r = self.rpc
        resp = self._once(
            op,
            lambda seq: r.TxnRequest(
                compare=[self._compare(stored, "CREATE", "GREATER", create_revision=0)],
                success=[r.RequestOp(request_delete_range=r.DeleteRangeRequest(key=stored)),
                         self._mark(seq)]),
        )  # fmt: skip
        return resp is None or bool(resp.succeeded)
