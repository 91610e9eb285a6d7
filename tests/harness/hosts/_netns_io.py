"""Sockets inside namespace hosts, from the test process itself (no interpreter per probe).

``setns(CLONE_NEWNET)`` moves only the calling thread; a socket keeps the network namespace it
was created in, so the thread moves back at once and the test talks from "host A" to "host B"
with ordinary sockets.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import threading
import time

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(namespace: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new IPv4 socket living in network namespace ``namespace``."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        _setns(there)
        try:
            return socket.socket(socket.AF_INET, kind)
        finally:
            _setns(here)
    finally:
        os.close(here)
        os.close(there)


def listener(namespace: str, address: str) -> socket.socket:
    """A TCP listener on ``address`` (a port of its own) inside ``namespace``."""
    sock = socket_in(namespace)
    sock.bind((address, 0))
    sock.listen(16)
    return sock


def connects(namespace: str, target: socket.socket, timeout: float) -> bool:
    """Whether a TCP connect from ``namespace`` to ``target``'s address completes in time."""
    sock = socket_in(namespace)
    sock.settimeout(timeout)
    try:
        sock.connect(target.getsockname())
    except TimeoutError:
        return False
    finally:
        sock.close()
    conn, _ = target.accept()  # keep the backlog empty for the next probe
    conn.close()
    return True


def udp_delivered(src_ns: str, dst_ns: str, address: str, port_sock: socket.socket,
                  count: int, marker: socket.socket) -> int:  # fmt: skip
    """Send ``count`` datagrams from ``src_ns`` to ``port_sock``, then one to ``marker`` (a port
    no fault matches); once the marker arrived, how many of the ``count`` had."""
    sender = socket_in(src_ns, socket.SOCK_DGRAM)
    try:
        for i in range(count):
            sender.sendto(i.to_bytes(4, "big"), port_sock.getsockname())
        sender.sendto(b"end", marker.getsockname())
    finally:
        sender.close()
    if not select.select([marker], [], [], 10)[0]:
        raise AssertionError(f"the marker datagram to {address} never arrived")
    marker.recv(16)
    port_sock.setblocking(False)
    seen = set()
    while True:
        try:
            seen.add(port_sock.recv(16))
        except BlockingIOError:
            return len(seen)


def udp_socket(namespace: str, address: str) -> socket.socket:
    """A UDP socket bound inside ``namespace`` with a receive buffer that holds a whole test."""
    sock = socket_in(namespace, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root): no drops of ours
    sock.bind((address, 0))
    return sock


def transfer_seconds(src_ns: str, target: socket.socket, size: int, timeout: float) -> float:
    """Seconds to send ``size`` bytes from ``src_ns`` to ``target`` until all were received."""
    got: list[float] = []

    def receive() -> None:
        conn, _ = target.accept()
        with conn:
            conn.settimeout(timeout)
            left = size
            while left > 0:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                left -= len(chunk)
            if left == 0:
                got.append(time.monotonic())

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    sender = socket_in(src_ns)
    sender.settimeout(timeout)
    try:
        started = time.monotonic()
        sender.connect(target.getsockname())
        sender.sendall(b"x" * size)
        reader.join(timeout)
    finally:
        sender.close()
    if not got:
        raise AssertionError(
            f"{size} bytes did not arrive at {target.getsockname()} in {timeout} s"
        )
    return got[0] - started
