"""Finding processes a run left behind, wherever they were reparented."""

from __future__ import annotations

import os
import select

TAG = "STOREHARNESS_RUN_TAG"


def tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``STOREHARNESS_RUN_TAG=tag``.

    Forked children keep the environment of the process that was exec'd, and exec'd children
    inherit it, so every descendant of a process started with the tag carries it.
    """
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone, or not ours to read
        if needle in environ and state != "Z":
            found.append(int(entry))
    return found


def listening(pid: int) -> list[tuple[str, int]]:
    """``(address, port)`` of every TCP socket process ``pid`` holds that is listening.

    Read from ``/proc``: the socket inodes among its descriptors, looked up in its network
    namespace's ``tcp`` and ``tcp6`` tables (state ``0A`` is LISTEN).
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    found = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:
                hex_address, hex_port = fields[1].split(":")
                found.append((_address(hex_address, v6), int(hex_port, 16)))
    return found


def _address(hex_address: str, v6: bool) -> str:
    """An address as /proc/net/tcp{,6} prints it (32-bit words in host byte order)."""
    import ipaddress
    import socket
    import struct

    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    return str(ipaddress.ip_address(socket.inet_ntop(family, raw)))


def exits_within(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (ours or not) ends within ``timeout`` s, waited on a pidfd: no
    polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
