"""Opening a TCPStore connection: resolve, connect, shake hands, all by one deadline.

Every failed attempt records what it met, and the error raised at the deadline says so, with the
hint that fits (``StoreBroken.reason`` names the case for code):

========== ============================================================== ======================
reason     what happened                                                  hint
========== ============================================================== ======================
refused    nobody listens on the port                                     no server listening?
unanswered the TCP connection request got no answer                       host down, firewall?
silent     a listener accepted the connection, never answered the         server stopped or
           handshake                                                      hung, another service?
closed     the listener closed (``lost``: reset) the connection during    is it a TCPStore
           the handshake; ``rejected``: it answered the ping wrongly      server?
unresolved the host name does not resolve (raised at once: no retry)      is the name right?
token      the server requires a token we lack, or refused ours (at once)  token= / the variable
========== ============================================================== ======================

Refused and failed attempts are retried with jittered backoff until the deadline (the server may
still be starting).  Names are resolved forward only: no reverse DNS, so no resolver stalls.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from typing import Any

from .._errors import StoreBroken
from ._token import TOKEN_ENV
from .codec import EXT_AUTH, MAGIC, STATUS_OK, Query, encode_request, parse_bytes

__all__ = ["SILENT", "SILENT_DETAIL", "open_connection"]

#: ``StoreBroken.reason`` of a listener that accepted the connection but never answered.
SILENT = "silent"
_SILENT_WHAT = "the listener accepted the connection but never answered the handshake"
_SILENT_HINT = "is the server stopped or hung, or is another service on this port?"
#: The same, as an error detail.
SILENT_DETAIL = f"{_SILENT_WHAT} ({_SILENT_HINT})"
_NOT_A_STORE = "is a TCPStore server on this port?"
_U32 = struct.Struct("<I")


class _Failed(Exception):
    """One attempt failed: ``reason`` (a short code), ``what`` happened, a ``hint``."""

    def __init__(self, reason: str, what: str, hint: str) -> None:
        super().__init__(what)
        self.reason, self.what, self.hint = reason, what, hint


def open_connection(
    host: str,
    port: int,
    endpoint: str,
    deadline: float | None,
    nonce: int,
    answers: set[int],
    token: str | None = None,
) -> tuple[socket.socket, int]:
    """Connect to ``host:port`` and send VALIDATE and PING ``nonce``, by ``deadline`` (an
    instant of ``time.monotonic()``; ``None``: no limit), retrying with backoff.  A server that
    answers :data:`EXT_AUTH` (a token is required) is sent ``token``.

    Returns the connected socket (blocking, TCP_NODELAY) and the server's answer to the ping,
    one of ``answers``.  Raises :class:`StoreBroken` at once for a name that does not resolve
    or a token missing or refused (``reason="token"``), else at the deadline, saying what the
    last attempt met.
    """
    start = time.monotonic()
    delay = 0.01
    failed = _Failed("unresolved", "the name resolved to no address", "is the name right?")
    while True:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno != socket.EAI_AGAIN:
                raise StoreBroken(
                    f"cannot resolve host {host!r} for TCPStore {endpoint}: {exc.strerror} "
                    "(is the host name right?)",
                    host=host,
                    port=port,
                    reason="unresolved",
                ) from exc
            infos = []
            what = f"temporary failure resolving {host!r} ({exc.strerror})"
            failed = _Failed("unresolved", what, "is the DNS server reachable?")
        for family, kind, proto, _, address in infos:
            try:
                return _attempt(socket.socket(family, kind, proto), address, deadline, nonce,
                                answers, token, endpoint)  # fmt: skip
            except _Failed as exc:
                failed = exc
        if deadline is not None and time.monotonic() >= deadline:
            raise StoreBroken(
                f"connect to TCPStore {endpoint} timed out after "
                f"{time.monotonic() - start:.1f} s ({failed.what}; {failed.hint})",
                host=host,
                port=port,
                reason=failed.reason,
            )
        pause = delay * random.uniform(0.5, 1.5)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)  # backoff between connection attempts, not synchronisation
        delay = min(delay * 2, 1.0)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.001, deadline - time.monotonic())


def _attempt(
    sock: socket.socket,
    address: Any,
    deadline: float | None,
    nonce: int,
    answers: set[int],
    token: str | None = None,
    endpoint: str = "",
) -> tuple[socket.socket, int]:
    """One TCP connect and handshake; raises :class:`_Failed` saying what failed."""
    try:
        try:
            sock.settimeout(_left(deadline))
            sock.connect(address)
        except ConnectionRefusedError:
            raise _Failed("refused", "connection refused", "no server listening?") from None
        except TimeoutError:
            what = "the TCP connection request got no answer"
            raise _Failed(
                "unanswered", what, "is the host down, or a firewall in the way?"
            ) from None
        except OSError as exc:
            what = exc.strerror or str(exc)
            raise _Failed("unreachable", what, "is the host reachable from here?") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answer = _handshake(sock, deadline, nonce)
        if answer not in answers:
            what = f"the handshake's ping was answered with {answer}, not {nonce}"
            raise _Failed("rejected", what, _NOT_A_STORE)
        if answer == EXT_AUTH:
            _authenticate(sock, deadline, token, endpoint, address)
        sock.settimeout(None)  # blocking again: the client bounds each wait itself
        return sock, answer
    except BaseException:
        sock.close()
        raise


def _handshake(sock: socket.socket, deadline: float | None, nonce: int) -> int:
    """VALIDATE then PING, and the ping's answer, by ``deadline`` (socket timeouts: the
    connection is not the client's yet, so nothing else relies on it being blocking)."""
    hello = encode_request(Query.VALIDATE, MAGIC) + encode_request(Query.PING, nonce)
    answer = b""
    try:
        sock.settimeout(_left(deadline))
        sock.sendall(hello)  # the timeout bounds the whole send
        while len(answer) < 4:
            sock.settimeout(_left(deadline))
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                what = "the listener closed the connection during the handshake"
                raise _Failed("closed", what, _NOT_A_STORE)
            answer += chunk
    except TimeoutError:
        raise _Failed(SILENT, _SILENT_WHAT, _SILENT_HINT) from None
    except OSError as exc:
        what = f"the connection broke during the handshake ({exc.strerror or exc})"
        raise _Failed("lost", what, _NOT_A_STORE) from None
    value: int = _U32.unpack(answer)[0]
    return value


def _authenticate(
    sock: socket.socket, deadline: float | None, token: str | None, endpoint: str, address: Any
) -> None:
    """Send the token a server asked for and read its verdict; :class:`StoreBroken` at once
    (``reason="token"``) when we have none or it is refused: retrying would not help."""
    host, port = address[0], address[1]
    if token is None:
        raise StoreBroken(
            f"TCPStore {endpoint} requires a token and none was given "
            f"(pass token= or set {TOKEN_ENV})",
            host=host,
            port=port,
            reason="token",
        )
    reply = b""
    try:
        sock.settimeout(_left(deadline))
        sock.sendall(encode_request(Query.AUTH, token.encode("utf-8", "surrogateescape")))
        while not reply or (reply[0] != STATUS_OK and _incomplete_error(reply)):
            sock.settimeout(_left(deadline))
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    except TimeoutError:
        raise _Failed(SILENT, _SILENT_WHAT, _SILENT_HINT) from None
    except OSError as exc:
        what = f"the connection broke while sending the token ({exc.strerror or exc})"
        raise _Failed("lost", what, _NOT_A_STORE) from None
    if reply[:1] != bytes([STATUS_OK]):
        raise StoreBroken(
            f"TCPStore {endpoint} refused our token (is it the server's token? "
            f"token= or {TOKEN_ENV})",
            host=host,
            port=port,
            reason="token",
        )


def _incomplete_error(reply: bytes) -> bool:
    """Whether an error reply (status byte, message string) is still missing bytes."""
    try:
        parse_bytes(reply, 1)
    except Exception:
        return True
    return False
