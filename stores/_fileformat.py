"""The FileStore log format: framing, encoding and strict decoding of records (no I/O here).

Version 2 (files starting with ``SHFSLOG2``; every file this version creates)::

    file   = "SHFSLOG2" record*
    record = header body                          one record per store operation
    header = u64 body_len | u32 crc32(body) | u32 crc32(the 12 bytes before it)
    body   = entry+                               applied all together or not at all
    entry  = u8 op | u32 key_len | u32 value_len | key | value

All integers are little-endian; keys are UTF-8 (undecodable bytes kept as lone surrogates, as
``as_key`` makes them).  Ops: 1 set, 2 delete (empty value), 3 append, 4 queue push, 5 queue
pop (empty value; the queue must hold an element), 6 bookkeeping (key ``refcount`` or
``cleanup``, value a decimal integer).

Why two checksums: the header's own CRC vouches for ``body_len`` before it is trusted, so a
damaged length is *damage* (raised, never repaired), while a record whose header is intact and
whose body runs past the end of the file is a *torn tail* or a write still in flight.  Only the
last record can be torn (see ``_filelog``), and a torn record is a prefix of a correct one, so a
header that fails its CRC is damage wherever it is.  The body's CRC and the strict decoding of
its entries (``decode``) turn hostile content with a valid CRC into damage too.

Version 1 (``SHFSLOG1``, written by storeharness before the records were framed per operation)
is still read, and appended to in its own framing so that older processes sharing the file keep
working::

    record = u32 crc32(body) | body,   body = u8 op | u32 key_len | u32 value_len | key | value

A v1 file has no header checksum and one record per entry: there a damaged length cannot be told
from a torn tail, and a ``multi_set`` killed mid-write may commit only its first keys.  A store
that starts on a fresh file always writes version 2.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from ._errors import StoreError

__all__ = [
    "MAGIC",
    "MAGIC_V1",
    "OP_APPEND",
    "OP_DELETE",
    "OP_META",
    "OP_QPOP",
    "OP_QPUSH",
    "OP_SET",
    "V1",
    "V2",
    "Damage",
    "Framing",
    "Record",
    "encode",
    "encode_v1",
]

MAGIC_V1 = b"SHFSLOG1"
MAGIC = b"SHFSLOG2"
OP_SET, OP_DELETE, OP_APPEND, OP_QPUSH, OP_QPOP, OP_META = 1, 2, 3, 4, 5, 6
OPS = frozenset({OP_SET, OP_DELETE, OP_APPEND, OP_QPUSH, OP_QPOP, OP_META})
META_KEYS = frozenset({"refcount", "cleanup"})

Record = tuple[int, str, bytes]

_U32 = struct.Struct("<I")
_ENTRY = struct.Struct("<BII")
_HEAD = struct.Struct("<QI")  # body_len, crc32(body); then u32 crc32(these 12 bytes)
_V1_HEADER = struct.Struct("<IBII")
_U32_MAX = 2**32 - 1
_DECIMAL = re.compile(rb"-?[0-9]{1,19}")


class Damage(Exception):
    """A record that is neither whole nor a torn tail: ``reason`` says what is wrong with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _too_long(kb: bytes, value: bytes) -> None:
    raise StoreError(
        f"FileStore: key or value of {max(len(kb), len(value))} bytes exceeds the 4 GiB limit "
        "of one entry"
    )


def encode(records: Sequence[Record]) -> bytes:
    """One version-2 record holding every ``(op, key, value)`` of one operation."""
    if len(records) == 1:
        op, key, value = records[0]
        kb = key.encode("utf-8", "surrogateescape")
        if len(kb) > _U32_MAX or len(value) > _U32_MAX:
            _too_long(kb, value)
        body = _ENTRY.pack(op, len(kb), len(value)) + kb + value
    else:
        parts: list[bytes] = []
        for op, key, value in records:
            kb = key.encode("utf-8", "surrogateescape")
            if len(kb) > _U32_MAX or len(value) > _U32_MAX:
                _too_long(kb, value)
            parts += (_ENTRY.pack(op, len(kb), len(value)), kb, value)
        body = b"".join(parts)
    head = _HEAD.pack(len(body), zlib.crc32(body))
    return b"".join((head, _U32.pack(zlib.crc32(head)), body))


def encode_v1(records: Iterable[Record]) -> bytes:
    """Version-1 records, one per entry (for appending to a file that is version 1)."""
    out = bytearray()
    for op, key, value in records:
        kb = key.encode("utf-8", "surrogateescape")
        if len(kb) > _U32_MAX or len(value) > _U32_MAX:
            _too_long(kb, value)
        body = _ENTRY.pack(op, len(kb), len(value)) + kb + value
        out += _U32.pack(zlib.crc32(body))
        out += body
    return bytes(out)


def _entry(view: memoryview, pos: int, end: int) -> tuple[Record, int]:
    """Decode the entry at ``pos`` of a body ending at ``end``; return it and the next pos."""
    if end - pos < _ENTRY.size:
        raise Damage(f"an entry header is cut short ({end - pos} of {_ENTRY.size} bytes)")
    op, klen, vlen = _ENTRY.unpack_from(view, pos)
    if op not in OPS:
        raise Damage(f"unknown operation code {op}")
    stop = pos + _ENTRY.size + klen + vlen
    if stop > end:
        raise Damage(
            f"entry lengths (key {klen}, value {vlen} bytes) run {stop - end} bytes past the record"
        )
    key = bytes(view[pos + _ENTRY.size : pos + _ENTRY.size + klen]).decode(
        "utf-8", "surrogateescape"
    )
    value = bytes(view[stop - vlen : stop])
    if op == OP_META:
        if key not in META_KEYS:
            raise Damage(f"unknown bookkeeping key {key!r}")
        if _DECIMAL.fullmatch(value) is None:
            raise Damage(f"bookkeeping value {value[:40]!r} is not a decimal integer")
    elif op in (OP_DELETE, OP_QPOP) and vlen:
        raise Damage(f"a {'delete' if op == OP_DELETE else 'queue pop'} carries a value")
    return (op, key, value), stop


class Framing(Protocol):
    """How one log version frames its records."""

    magic: bytes
    header_size: int

    def body_length(self, buf: bytes, pos: int) -> int:
        """Bytes after the header; raises ``Damage`` if the header is provably damaged."""
        ...

    def decode(self, view: memoryview, pos: int, end: int) -> list[Record]:
        """Check and decode the whole record ``view[pos:end]``; raises ``Damage``."""
        ...

    def encode(self, records: Sequence[Record]) -> bytes: ...


class _V2:
    magic = MAGIC
    header_size = _HEAD.size + _U32.size

    @staticmethod
    def body_length(buf: bytes, pos: int) -> int:
        body_len, _ = _HEAD.unpack_from(buf, pos)
        (check,) = _U32.unpack_from(buf, pos + _HEAD.size)
        if zlib.crc32(memoryview(buf)[pos : pos + _HEAD.size]) != check:
            raise Damage("record header checksum mismatch (a damaged length field?)")
        if body_len == 0:
            raise Damage("empty record")
        return int(body_len)

    @staticmethod
    def decode(view: memoryview, pos: int, end: int) -> list[Record]:
        _, crc = _HEAD.unpack_from(view, pos)
        start = pos + _V2.header_size
        if zlib.crc32(view[start:end]) != crc:
            raise Damage("record checksum mismatch")
        out = []
        while start < end:
            record, start = _entry(view, start, end)
            out.append(record)
        return out

    encode = staticmethod(encode)


class _V1:
    magic = MAGIC_V1
    header_size = _V1_HEADER.size

    @staticmethod
    def body_length(buf: bytes, pos: int) -> int:
        _, _, klen, vlen = _V1_HEADER.unpack_from(buf, pos)
        return int(klen + vlen)

    @staticmethod
    def decode(view: memoryview, pos: int, end: int) -> list[Record]:
        (crc,) = _U32.unpack_from(view, pos)
        if zlib.crc32(view[pos + _U32.size : end]) != crc:
            raise Damage("record checksum mismatch")
        record, _ = _entry(view, pos + _U32.size, end)
        return [record]

    encode = staticmethod(encode_v1)


V2: Framing = _V2()
V1: Framing = _V1()
