"""The codec against bytes captured from torch 2.13 (TCP_PROTOCOL.md §3.5), and its bounds."""

from __future__ import annotations

import pytest

from storeharness.stores.tcp.codec import (
    EXT_HELLO,
    MAGIC,
    Incomplete,
    Limits,
    ProtocolError,
    Query,
    RequestDecoder,
    encode_multi_set,
    encode_request,
    parse_bytes,
    parse_i64,
)


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


Z7 = "00 00 00 00 00 00 00"  # the rest of a u64 whose low byte is given

CAPTURES = [
    # (what torch's client sent, our encoding of the same request)
    ("00 ce f7 85 3c", encode_request(Query.VALIDATE, MAGIC)),
    ("0d 88 53 00 00", encode_request(Query.PING, 0x5388)),
    (f"04 05 {Z7} 69 6e 69 74 2f 01 {Z7}", encode_request(Query.ADD, b"init/", 1)),
    (f"01 02 {Z7} 2f 6b 01 {Z7} 76", encode_request(Query.SET, b"/k", b"v")),
    (f"06 01 {Z7} 02 {Z7} 2f 6b", encode_request(Query.WAIT, [b"/k"])),
    (f"03 02 {Z7} 2f 6b", encode_request(Query.GET, b"/k")),
    (f"04 04 {Z7} 2f 63 6e 74 fe ff ff ff ff ff ff ff", encode_request(Query.ADD, b"/cnt", -2)),
    (f"05 02 {Z7} 02 {Z7} 2f 6b 03 {Z7} 2f 7a 7a", encode_request(Query.CHECK, [b"/k", b"/zz"])),
    ("0c", encode_request(Query.CANCEL_WAIT)),
    (
        f"02 0b {Z7} 2f 6d 69 73 73 69 6e 67 5f 63 73 01 {Z7} 78 01 {Z7} 79",
        encode_request(Query.COMPARE_SET, b"/missing_cs", b"x", b"y"),
    ),
    ("07", encode_request(Query.GETNUMKEYS)),
    (f"08 02 {Z7} 2f 6b", encode_request(Query.DELETE_KEY, b"/k")),
    (
        f"0b 02 {Z7} 02 {Z7} 2f 61 01 {Z7} 31 02 {Z7} 2f 62 01 {Z7} 32",
        encode_multi_set([(b"/a", b"1"), (b"/b", b"2")]),
    ),
    ("11", encode_request(Query.LIST_KEYS)),
    (f"12 03 {Z7} 2f 62 6b 01 {Z7}", encode_request(Query.BARRIER, b"/bk", 1)),
    (f"0e 02 {Z7} 2f 71 01 {Z7} 78", encode_request(Query.QUEUE_PUSH, b"/q", b"x")),
    (f"0f 02 {Z7} 2f 71", encode_request(Query.QUEUE_POP, b"/q")),
]


@pytest.mark.parametrize(("captured", "ours"), CAPTURES, ids=[c[0][:8] for c in CAPTURES])
def test_encoding_matches_torch_bytes(captured: str, ours: bytes) -> None:
    assert ours == hx(captured)


def test_decoder_reads_the_captured_session_in_one_feed_and_byte_by_byte() -> None:
    stream = b"".join(hx(c) for c, _ in CAPTURES)
    whole = RequestDecoder()
    whole.feed(stream)
    at_once = []
    while (req := whole.next()) is not None:
        at_once.append(req)
    assert [q for q, _ in at_once] == [Query(hx(c)[0]) for c, _ in CAPTURES]
    assert at_once[2] == (Query.ADD, (b"init/", 1))
    assert at_once[7] == (Query.CHECK, ((b"/k", b"/zz"),))
    assert at_once[12] == (Query.MULTI_SET, (((b"/a", b"1"), (b"/b", b"2")),))
    trickle = RequestDecoder()
    one_by_one = []
    for byte in stream:
        trickle.feed(bytes([byte]))
        while (req := trickle.next()) is not None:
            one_by_one.append(req)
    assert one_by_one == at_once
    assert whole.buffered == trickle.buffered == 0


def test_replies_parse_the_captured_bytes() -> None:
    assert parse_i64(hx("03 00 00 00 00 00 00 00"), 0) == (3, 8)
    assert parse_bytes(hx(f"01 {Z7} 78"), 0) == (b"x", 9)
    with pytest.raises(Incomplete) as inc:
        parse_bytes(hx(f"05 {Z7} 78"), 0)
    assert inc.value.need == 13


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x63", "unknown command byte 0x63"),
        (bytes([Query.WAIT_GET]) + b"\x00" * 8, "extension command WAIT_GET on a plain"),
        (b"\x01" + (2**63).to_bytes(8, "little"), "exceeds the limit"),
        (b"\x05" + (2**63 + 5).to_bytes(8, "little"), "CHECK with -"),
        (b"\x05" + (131073).to_bytes(8, "little"), "max_keys=131072"),
    ],
)
def test_bad_input_is_refused_before_allocating(data: bytes, match: str) -> None:
    decoder = RequestDecoder(Limits(max_keys=131072))
    decoder.feed(data)
    with pytest.raises(ProtocolError, match=match):
        decoder.next()


def test_a_huge_announced_request_is_refused_early() -> None:
    decoder = RequestDecoder(Limits(max_value=1 << 40, max_request=1 << 20))
    decoder.feed(encode_request(Query.SET, b"/k", b"")[:-8] + (1 << 30).to_bytes(8, "little"))
    with pytest.raises(ProtocolError, match="max_request"):
        decoder.next()


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_key"):
        Limits(max_key=0)


def test_ext_hello_cannot_be_a_pid() -> None:
    assert EXT_HELLO > 2**22  # PID_MAX_LIMIT on Linux: no torch client sends this nonce
