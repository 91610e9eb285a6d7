"""Where a run's data lives in etcd's flat key space, and how endpoints are written.

Under the run's root ``R`` (``<prefix>/``):

* ``R k/<key>``: a key's value (so ``num_keys``/``list_keys`` are one range each and never see
  queues or bookkeeping);
* ``R q/<hex(name)>/<time_ns>-<uuid>``: one key per queue item, ordered by create revision (hex
  keeps a ``/`` in a queue name from colliding with item ids);
* ``R m/lease``: the run lease's id; ``R m/op/<client>-<thread>``: the number of the last
  write of one client thread, which settles whether a resent write already applied;
  ``R m/join/<rank>``: rank ``rank`` joined through ``etcd://`` rendezvous.
"""

from __future__ import annotations

import re

__all__ = ["Layout", "parse_endpoints", "range_end"]


def range_end(prefix: bytes) -> bytes:
    """etcd's end of the range holding every key that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _wire(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


class Layout:
    """Key names of one run (``prefix``) in etcd."""

    def __init__(self, prefix: str) -> None:
        root = _wire(prefix.rstrip("/") + "/")
        self.root = root
        self.data = root + b"k/"
        self.data_end = range_end(self.data)
        self.queues = root + b"q/"
        self.lease = root + b"m/lease"
        self.ops = root + b"m/op/"
        self.joined = root + b"m/join/"

    def key(self, key: str) -> bytes:
        return self.data + _wire(key)

    def name(self, stored: bytes) -> str:
        """The user's key of a stored data key."""
        return stored[len(self.data) :].decode("utf-8", "surrogateescape")

    def queue(self, key: str) -> bytes:
        return self.queues + _wire(key).hex().encode() + b"/"

    def queue_name(self, item: bytes) -> str:
        """The queue name an item key belongs to."""
        hexed = item[len(self.queues) :].split(b"/", 1)[0]
        return bytes.fromhex(hexed.decode()).decode("utf-8", "surrogateescape")


_ENDPOINT = re.compile(r"^\[?([^\[\]]+?)\]?:(\d+)$")


def parse_endpoints(endpoints: object) -> list[tuple[str, int]]:
    """``"h:p,h:p"``, ``"http://h:p"``, ``("h", p)`` or a list of those, as ``[(host, port)]``.

    Raises ``ValueError`` naming the entry that is not ``host:port``.
    """
    items: list[object]
    if isinstance(endpoints, str):
        items = [e for e in endpoints.split(",") if e.strip()]
    elif isinstance(endpoints, tuple) and len(endpoints) == 2 and isinstance(endpoints[1], int):
        items = [endpoints]
    elif isinstance(endpoints, list | tuple):
        items = list(endpoints)
    else:
        raise TypeError(
            f"EtcdStore endpoints must be 'host:port[,host:port]' or a list of them, "
            f"got {type(endpoints).__name__} {endpoints!r}"
        )
    out: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            host, port = str(item[0]), int(item[1])
        else:
            text = str(item).strip().removeprefix("http://")
            match = _ENDPOINT.match(text.rstrip("/"))
            if match is None:
                raise ValueError(
                    f"EtcdStore endpoint {item!r} is not host:port (e.g. 127.0.0.1:2379); "
                    "TLS (https://) endpoints are not supported"
                )
            host, port = match.group(1), int(match.group(2))
        if not 0 < port < 65536:
            raise ValueError(f"EtcdStore endpoint {item!r}: port {port} is out of range 1-65535")
        out.append((host, port))
    if not out:
        raise ValueError("EtcdStore needs at least one endpoint (host:port)")
    return out
