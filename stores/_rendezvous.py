"""Rendezvous: torch.distributed's ``rendezvous(url)`` over our stores.

``rendezvous(url, rank=-1, world_size=-1, **kwargs)`` returns a generator; its first ``next()``
yields ``(store, rank, world_size)``, a second raises, as torch 2.13's does.  Arguments, URL
rewriting, query parsing and every message follow torch (``STORE_SEMANTICS.md`` section 6);
where we differ on purpose, ``docs/differences.md`` says so under *Rendezvous*.  The schemes:

* ``tcp://host:port?rank=R&world_size=W[&use_libuv=0|1]``: a :class:`TCPStore` at
  ``host:port``; rank 0 serves it (multi-tenant: masters of one process share a port), the
  rest connect.  ``timeout=`` (default 30 min, torch's ``default_pg_timeout``) is the store's.
  ``use_libuv`` defaults to ``$USE_LIBUV`` (default ``"1"``); only ``"1"`` means true.  With
  ``TORCHELASTIC_USE_AGENT_STORE=True`` (that exact text) every rank connects as a client.
  Port 0 on rank 0 binds an ephemeral port: read it from the store's ``port``.
* ``env://``: the same, from ``$MASTER_ADDR`` and ``$MASTER_PORT``; rank and world size from
  the query (or the explicit arguments, which land there) else ``$RANK`` and ``$WORLD_SIZE``.
  An empty variable counts as unset.
* ``file:///path?rank=R&world_size=W``: a :class:`FileStore` (``timeout=``, default 300 s).

A scheme is a generator function registered with :func:`register_rendezvous_handler`: it gets
the URL (``rank``/``world_size`` already in its query) and the caller's keyword arguments,
yields the triple once and raises on a second request.  Handlers in this package (the three
below; later ``etcd://``, its own issue, from its own module) reuse ``_query_to_dict``,
``_node_params`` and ``_rendezvous_error`` so they parse and fail exactly as torch's do.  Our
registry is ours: torch's is untouched, and torch is never imported.
"""

from __future__ import annotations

import numbers
import os
import re
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeAlias
from urllib.parse import urlparse, urlunparse

from ._base import Store
from ._types import DEFAULT_TIMEOUT, TimeoutLike
from .file import FileStore
from .tcp.store import TCPStore

__all__ = ["DEFAULT_PG_TIMEOUT", "RendezvousHandler", "register_rendezvous_handler", "rendezvous"]

#: A handler: ``handler(url, **kwargs)`` returns an iterator of ``(store, rank, world_size)``.
RendezvousHandler: TypeAlias = Callable[..., Iterator[tuple[Store, int, int]]]

#: torch's ``default_pg_timeout``: the timeout of a TCPStore made by ``tcp://`` or ``env://``.
DEFAULT_PG_TIMEOUT = timedelta(minutes=30)

_handlers: dict[str, RendezvousHandler] = {}
_handlers_lock = threading.Lock()

# What urllib recognises as a scheme, after it lowercases one: a handler under any other name
# could never be reached, so registering it is refused instead of silently ignored.
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\Z")


def register_rendezvous_handler(scheme: str, handler: RendezvousHandler) -> None:
    """Make ``rendezvous("{scheme}://…")`` call ``handler(url, **kwargs)``.

    ``handler`` is a generator function yielding ``(store, rank, world_size)`` once, then
    raising (torch's contract).  Raises ``RuntimeError`` (torch's text) if ``scheme`` has a
    handler already, ``ValueError`` for a scheme no URL can carry (urllib lowercases schemes and
    allows only letters, digits, ``+``, ``-`` and ``.``), ``TypeError`` if ``handler`` is not
    callable or ``scheme`` is not a ``str``.
    """
    if not isinstance(scheme, str):
        raise TypeError(f"rendezvous scheme must be a str, got {type(scheme).__name__}")
    if not _SCHEME.match(scheme):
        raise ValueError(
            f"rendezvous scheme {scheme!r} can never match a URL: urllib lowercases schemes and "
            "they must start with a letter followed by letters, digits, '+', '-' or '.' "
            f"(try {scheme.lower().replace('_', '-')!r})"
        )
    if not callable(handler):
        raise TypeError(
            f"rendezvous handler for {scheme}:// must be a generator function "
            f"handler(url, **kwargs), got {type(handler).__name__} {handler!r}"
        )
    with _handlers_lock:
        if scheme in _handlers:
            raise RuntimeError(f"Rendezvous handler for {scheme}:// already registered")
        _handlers[scheme] = handler


def rendezvous(
    url: str | bytes, rank: int = -1, world_size: int = -1, **kwargs: Any
) -> Iterator[tuple[Store, int, int]]:
    """Find the store for ``url``: a generator whose ``next()`` yields ``(store, rank, size)``.

    ``rank``/``world_size`` other than -1 are appended to the URL's query; ``kwargs`` (such as
    ``timeout``) go to the scheme's handler.  Raises at the call, as torch does:
    ``RuntimeError`` for a ``url`` that is not ``str``/``bytes`` or a ``rank``/``world_size``
    that is not an integer, ``AssertionError`` when the URL has ``rank``/``world_size`` already
    and explicit ones are given too, ``RuntimeError("No rendezvous handler for {scheme}://")``.
    The handler's errors (``ValueError("Error initializing torch.distributed using …")`` for a
    missing path, port, rank, world size or environment variable; the store's own errors) are
    raised by the first ``next()``.
    """
    if not isinstance(url, str | bytes):
        raise RuntimeError(f"`url` must be a string. {type(url)}: {url}")
    if not _integral(rank):
        raise RuntimeError(f"`rank` must be an integer. {rank}")
    if not _integral(world_size):
        raise RuntimeError(f"`world_size` must be an integer. {world_size}")
    if isinstance(url, bytes):  # torch takes bytes, then fails on them; URLs are text
        url = url.decode("utf-8")

    parts = urlparse(url)
    if rank != -1 or world_size != -1:
        query = _query_to_dict(parts.scheme, parts.query)
        if "rank" in query or "world_size" in query:
            raise AssertionError(
                f"The url: {url} has node-specific arguments(rank, world_size) already."
            )
        if rank != -1:
            query["rank"] = str(rank)
        if world_size != -1:
            query["world_size"] = str(world_size)
        parts = parts._replace(query="&".join(f"{k}={v}" for k, v in query.items()))
        url = urlunparse(parts)

    handler = _handlers.get(parts.scheme)
    if handler is None:
        raise RuntimeError(f"No rendezvous handler for {parts.scheme}://")
    return handler(url, **kwargs)


def _integral(value: object) -> bool:
    # torch's test is numbers.Integral (numpy integers pass), which also admits bool; torch
    # then fails parsing "rank=True".  We refuse bool here, with torch's message.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# ----------------------------------------------------------------- shared by handlers


def _rendezvous_error(scheme: str, msg: str) -> ValueError:
    return ValueError(f"Error initializing torch.distributed using {scheme}:// rendezvous: {msg}")


def _query_to_dict(scheme: str, query: str) -> dict[str, str]:
    """torch's parse of ``a=1&b=2``: no percent-decoding, empty pairs skipped, the last wins.

    Unlike torch, a value keeps any further ``=`` (torch cuts ``a=b=c`` to ``b``) and a pair
    without ``=`` raises a ``ValueError`` naming it (torch: a bare ``IndexError``).
    """
    out: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        name, eq, value = pair.partition("=")
        if not eq:
            raise _rendezvous_error(
                scheme, f"query parameter {pair!r} has no value (expected name=value)"
            )
        out[name] = value
    return out


def _node_params(scheme: str, query: dict[str, str]) -> tuple[int, int]:
    """``(rank, world_size)`` from the query; torch's messages when either is missing."""
    if "rank" not in query:
        raise _rendezvous_error(scheme, "rank parameter missing")
    if "world_size" not in query:
        raise _rendezvous_error(scheme, "world size parameter missing")
    return int(query["rank"]), int(query["world_size"])


def _use_libuv(query: dict[str, str]) -> bool:
    return query.get("use_libuv", os.environ.get("USE_LIBUV", "1")) == "1"


def _c10d_store(
    host: str, port: int, rank: int, world_size: int, timeout: TimeoutLike, use_libuv: bool
) -> TCPStore:
    """torch's ``_create_c10d_store``: rank 0 serves (multi-tenant) unless an agent does."""
    if not 0 <= port < 2**16:
        raise ValueError(f"port must have value from 0 to 65535 but was {port}.")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchelastic's agent serves the store; torch passes neither multi_tenant nor
        # use_libuv here, so the client reports the default backend whatever the URL says.
        return TCPStore(host, port, world_size, False, timeout)
    return TCPStore(
        host, port, world_size, rank == 0, timeout, multi_tenant=True, use_libuv=use_libuv
    )


# ----------------------------------------------------------------- the built-in schemes


def _file_rendezvous_handler(
    url: str, timeout: TimeoutLike = DEFAULT_TIMEOUT, **kwargs: Any
) -> Iterator[tuple[Store, int, int]]:
    parts = urlparse(url)
    if not parts.path:
        raise _rendezvous_error("file", "path missing")
    rank, world_size = _node_params("file", _query_to_dict("file", parts.query))
    # torch ignores ``timeout`` here (its FileStore keeps 300 s); we honour it.
    store = FileStore(parts.path, world_size, timeout)
    yield (store, rank, world_size)
    raise RuntimeError("Unable to perform rerendezvous using file:// method")


def _tcp_rendezvous_handler(
    url: str, timeout: TimeoutLike = DEFAULT_PG_TIMEOUT, **kwargs: Any
) -> Iterator[tuple[Store, int, int]]:
    parts = urlparse(url)
    port = parts.port  # urllib raises ValueError for a port out of range or not a number
    if port is None:
        raise _rendezvous_error("tcp", "port number missing")
    query = _query_to_dict("tcp", parts.query)
    rank, world_size = _node_params("tcp", query)
    use_libuv = _use_libuv(query)
    if parts.hostname is None:
        raise AssertionError("hostname cannot be None")
    store = _c10d_store(parts.hostname, port, rank, world_size, timeout, use_libuv)
    yield (store, rank, world_size)
    raise RuntimeError("Unable to perform re-rendezvous using tcp:// method")


def _env_rendezvous_handler(
    url: str, timeout: TimeoutLike = DEFAULT_PG_TIMEOUT, **kwargs: Any
) -> Iterator[tuple[Store, int, int]]:
    def env(name: str) -> str:
        value = os.environ.get(name)
        if not value:
            raise _rendezvous_error("env", f"environment variable {name} expected, but not set")
        return value

    query = _query_to_dict("env", urlparse(url).query)
    rank = int(query["rank"] if "rank" in query else env("RANK"))
    world_size = int(query["world_size"] if "world_size" in query else env("WORLD_SIZE"))
    master_addr = env("MASTER_ADDR")
    master_port = int(env("MASTER_PORT"))
    store = _c10d_store(master_addr, master_port, rank, world_size, timeout, _use_libuv(query))
    yield (store, rank, world_size)
    raise RuntimeError("Unable to perform re-rendezvous using env:// method")


register_rendezvous_handler("tcp", _tcp_rendezvous_handler)
register_rendezvous_handler("env", _env_rendezvous_handler)
register_rendezvous_handler("file", _file_rendezvous_handler)
