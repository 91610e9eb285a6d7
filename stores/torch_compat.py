"""Our stores as ``torch.distributed.Store`` objects: a real torch process group over them.

:func:`as_torch_store` returns a ``torch.distributed.Store`` that forwards every operation to one
of our stores, so torch code that takes a store runs over ours unchanged::

    import torch.distributed as dist
    from storeharness.stores import TCPStore
    from storeharness.stores.torch_compat import as_torch_store

    ours = TCPStore("127.0.0.1", port, world_size=2, is_master=(rank == 0))
    dist.init_process_group("gloo", store=as_torch_store(ours), rank=rank, world_size=2)
    ...
    dist.destroy_process_group()
    ours.close()  # the wrapper lives until then (see as_torch_store)

RPC takes a URL, not a store: :func:`torch_init_method` makes one that hands torch the wrapper.

This is the reverse of :mod:`.torch_adapter` (torch's stores behind our API).  It builds on the
Python-subclassable ``torch.distributed.Store`` (a pybind11 trampoline).  What torch 2.13's C++
side calls through that trampoline, measured by driving a logging subclass through a C++
``PrefixStore`` (``tests/stores/test_torch_compat.py`` pins it):

* ``set``, ``get``, ``add``, ``compare_set``, ``wait`` (with and without a timeout), ``check``,
  ``clone``, ``append``, ``multi_get``, ``multi_set``, ``has_extended_api`` by those names;
* ``deleteKey`` and ``getNumKeys`` by their C++ names (``delete_key``/``num_keys`` are what Python
  callers use; both spellings are defined here);
* the C++ ``barrier`` is built from ``add``/``set``/``wait``; ``set_timeout`` is not virtual (it
  only sets the C++ member, see below); queues and ``list_keys`` are not forwarded at all (C++
  raises ``NotImplementedError``).  They work when Python calls this object directly.

**Timeouts.**  The C++ base keeps its own timeout (``store.timeout``), which a C++ ``PrefixStore``
sets without calling Python.  Before each blocking operation the two are reconciled: whichever
side changed since the last look wins, so ``PrefixStore(...).set_timeout`` and our store's own
``set_timeout`` both take effect.

**Errors** leave as torch's classes, with ours chained as ``__cause__``: :class:`StoreTimeout` →
``DistStoreError`` (its message in torch's phrasing, ``wait timeout after 100ms, keys: k``, then
ours), :class:`QueueEmpty` → ``QueueEmptyError``, :class:`StoreBroken` → ``DistNetworkError``,
any other :class:`StoreError` → ``DistStoreError``.  ``ValueError``/``TypeError``/
``NotImplementedError`` (our ``StoreValueError``/``UnsupportedOperation`` are those) pass as they
are, as torch's own stores raise those builtins.  pybind11 carries a Python exception raised in
an override through C++ (gloo included) and back to Python with its type intact.

torch is imported only when :func:`as_torch_store` is first called; importing this module, or
``storeharness.stores``, never imports it.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
import weakref
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

from . import _errors
from ._base import Store
from ._errors import QueueEmpty, StoreBroken, StoreError, StoreTimeout

__all__ = ["SCHEME", "as_torch_store", "torch_error", "torch_init_method"]

#: The URL scheme :func:`torch_init_method` registers with ``torch.distributed``.
SCHEME = "storeharness"


def as_torch_store(store: Store) -> Any:
    """A ``torch.distributed.Store`` forwarding to ``store`` (one of ours, or any :class:`Store`).

    The result shares ``store``'s data and timeout and hands ``store`` back as ``.store``; the
    same ``store`` always gets the same wrapper.  **Lifetime**: torch's C++ side holds the wrapper
    by a pointer Python cannot see, and once the wrapper's Python half is collected every C++
    call fails with ``fn INTERNAL ASSERT FAILED ... Not implemented`` (measured on torch 2.13:
    ``init_process_group(store=MyPythonStore())`` then ``new_group()``).  So this module keeps
    the wrapper, and with it ``store``, alive until ``store`` is closed: close it once torch is
    done (after ``destroy_process_group()`` / ``rpc.shutdown()``).  Raises ``TypeError`` for
    anything but a :class:`Store`, ``ImportError`` naming the fix when torch is missing.
    """
    if not isinstance(store, Store):
        raise TypeError(
            f"as_torch_store wraps one of our stores (a storeharness.stores.Store), got "
            f"{type(store).__name__}; torch's own stores are torch.distributed.Store already"
        )
    cls = _forwarding_class()
    with _registry_lock:
        for key in [k for k, w in _alive.items() if w.store.closed]:
            del _alive[key]
        wrapper = _alive.get(id(store))
        if wrapper is None or wrapper.store is not store:
            wrapper = _alive[id(store)] = cls(store)
        return wrapper


def torch_init_method(store: Store) -> str:
    """An ``init_method`` URL under which torch's rendezvous hands out ``as_torch_store(store)``.

    For APIs that take a URL rather than a store, chiefly RPC: torch 2.13's ``rpc.init_rpc`` has
    no ``store=``; it calls ``torch.distributed.rendezvous(options.init_method, rank, ...)``::

        opts = rpc.TensorPipeRpcBackendOptions(init_method=torch_init_method(ours))
        rpc.init_rpc("worker0", rank=0, world_size=2, rpc_backend_options=opts)

    The first call registers the ``storeharness://`` scheme with ``torch.distributed`` in this
    process.  The URL names ``store`` only within this process and only while ``store`` is alive
    (it is held weakly).  Like torch's ``file://`` handler it needs ``rank`` and ``world_size``
    (torch's rendezvous appends them) and refuses a re-rendezvous.  RPC then sets the store's
    timeout to its ``rpc_timeout`` (torch does the same to the store it creates).
    """
    if not isinstance(store, Store):
        raise TypeError(
            f"torch_init_method takes one of our stores (a storeharness.stores.Store), got "
            f"{type(store).__name__}"
        )
    dist = _torch_distributed()
    with _registry_lock:
        if not _registered:
            dist.register_rendezvous_handler(SCHEME, _rendezvous_handler)
            _registered.append(True)
        token = uuid.uuid4().hex
        _by_token[token] = store
    return f"{SCHEME}://{token}"


_registry_lock = threading.Lock()
#: The wrappers torch may still call, by ``id()`` of our store; dropped once that store closes.
_alive: dict[int, Any] = {}
_registered: list[bool] = []
_by_token: weakref.WeakValueDictionary[str, Store] = weakref.WeakValueDictionary()


def _rendezvous_handler(url: str, **kwargs: Any) -> Iterator[tuple[Any, int, int]]:
    """torch's rendezvous handler contract: yield ``(store, rank, world_size)`` once."""
    parsed = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}

    def error(message: str) -> ValueError:
        # torch's own handlers' wording: "Error initializing torch.distributed using <scheme>".
        return ValueError(
            f"Error initializing torch.distributed using {SCHEME}:// rendezvous: "
            f"{message} (in {url!r})"
        )

    store = _by_token.get(parsed.netloc)
    if store is None:
        raise error(
            "no live store under this URL in this process; keep the store passed to "
            "torch_init_method alive, and call torch_init_method in the process that uses the URL"
        )
    for name in ("rank", "world_size"):
        if name not in query:
            raise error(f"{name.replace('_', ' ')} parameter missing")
    try:
        rank, world_size = int(query["rank"]), int(query["world_size"])
    except ValueError as exc:
        raise error(f"rank and world_size must be integers: {exc}") from exc
    yield as_torch_store(store), rank, world_size
    raise RuntimeError(f"Unable to perform re-rendezvous using {SCHEME}:// method")


def torch_error(exc: Exception) -> Exception:
    """The exception torch's own stores raise where ours raised ``exc`` (``exc`` is not chained).

    Decided by our classes (``isinstance``), so subclasses map as their base: a timeout is
    ``DistStoreError``, an empty queue ``QueueEmptyError``, a broken peer (any of our errors that
    is a ``ConnectionError``) ``DistNetworkError``; ``ValueError``, ``TypeError`` and
    ``NotImplementedError`` are returned as they are (torch raises those builtins too).
    """
    dist = _torch_distributed()
    made: Exception
    if isinstance(exc, StoreTimeout):
        shown = ", ".join(exc.keys)
        millis = round(exc.timeout * 1000)
        phrase = f"{exc.op} timeout after {millis}ms, keys: {shown}"
        text = str(exc)  # ours already in torch's phrasing: do not say it twice
        made = dist.DistStoreError(text if phrase in text else f"{phrase} ({text})")
    elif isinstance(exc, QueueEmpty):
        made = dist.QueueEmptyError(str(exc))
    elif isinstance(exc, StoreBroken | ConnectionError):
        made = dist.DistNetworkError(str(exc))
    elif isinstance(exc, ValueError | TypeError | NotImplementedError):
        made = exc
    else:
        made = dist.DistStoreError(str(exc))
    return made


@contextlib.contextmanager
def _torch_errors() -> Iterator[None]:
    try:
        yield
    except _OUR_ROOTS as exc:
        converted = torch_error(exc)
        if converted is exc:
            raise
        raise converted from exc


#: The roots of our error tree: StoreError, and DistError where our tree has torch's names too.
_OUR_ROOTS: tuple[type[Exception], ...] = tuple(
    {getattr(_errors, "DistError", StoreError), StoreError}
)


def _torch_distributed() -> Any:
    try:
        import torch.distributed as dist
    except ImportError as exc:
        raise ImportError(
            "storeharness.stores.torch_compat needs torch: pip install 'storeharness[torch]' "
            f"(torch==2.13.0, CPU is enough); importing it failed: {exc}"
        ) from exc
    if not dist.is_available():
        raise ImportError(
            "this torch build has no torch.distributed, which storeharness.stores.torch_compat "
            "needs (the CPU wheel of torch==2.13.0 has it)"
        )
    return dist


def _as_timedelta(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


@functools.cache
def _forwarding_class() -> type[Any]:
    """The ``torch.distributed.Store`` subclass, built once, on first use (torch imports here)."""
    dist = _torch_distributed()
    base: Any = dist.Store

    class TorchCompatStore(base):  # type: ignore[misc]
        """A ``torch.distributed.Store`` over one of our stores (see :func:`as_torch_store`)."""

        def __init__(self, store: Store) -> None:
            super().__init__()
            self._ours = store
            base.set_timeout(self, store.timeout)
            self._remember_timeouts()

        def __repr__(self) -> str:
            return f"TorchCompatStore({self._ours!r})"

        @property
        def store(self) -> Store:
            """Our store this one forwards to."""
            return self._ours

        def _remember_timeouts(self) -> None:
            # Each side as it reads back (C++ keeps whole milliseconds), so that rounding is
            # never mistaken for a change.
            self._seen = (self.timeout, self._ours.timeout)

        def _sync_timeout(self) -> None:
            """Reconcile torch's C++ timeout with ours: the side that changed since last wins."""
            theirs, ours = self.timeout, self._ours.timeout
            if theirs != self._seen[0]:
                self._ours.set_timeout(theirs)
                self._remember_timeouts()
            elif ours != self._seen[1]:
                base.set_timeout(self, ours)
                self._remember_timeouts()

        # ------------------------------------------------------------- what C++ calls

        def set(self, key: str, value: bytes | str) -> None:
            with _torch_errors():
                self._ours.set(key, value)

        def get(self, key: str) -> bytes:
            self._sync_timeout()
            with _torch_errors():
                return self._ours.get(key)

        def add(self, key: str, amount: int) -> int:
            with _torch_errors():
                return self._ours.add(key, amount)

        def compare_set(self, key: str, expected: bytes | str, desired: bytes | str) -> bytes:
            with _torch_errors():
                return self._ours.compare_set(key, expected, desired)

        def wait(self, keys: Sequence[str], timeout: timedelta | None = None) -> None:
            self._sync_timeout()
            with _torch_errors():
                self._ours.wait(keys, timeout)

        def check(self, keys: Sequence[str]) -> bool:
            with _torch_errors():
                return self._ours.check(keys)

        def delete_key(self, key: str) -> bool:
            with _torch_errors():
                return self._ours.delete_key(key)

        deleteKey = delete_key  # the name torch's C++ trampoline calls

        def num_keys(self) -> int:
            with _torch_errors():
                return self._ours.num_keys()

        getNumKeys = num_keys  # the name torch's C++ trampoline calls

        def clone(self) -> Any:
            with _torch_errors():
                return as_torch_store(self._ours.clone())

        def append(self, key: str, value: bytes | str) -> None:
            with _torch_errors():
                self._ours.append(key, value)

        def multi_get(self, keys: Sequence[str]) -> list[bytes]:
            self._sync_timeout()
            with _torch_errors():
                return self._ours.multi_get(keys)

        def multi_set(self, keys: Sequence[str], values: Sequence[bytes | str]) -> None:
            with _torch_errors():
                self._ours.multi_set(keys, values)

        def has_extended_api(self) -> bool:
            return self._ours.has_extended_api()

        # ------------------------------------------------------------- Python callers only

        def set_timeout(self, timeout: timedelta) -> None:
            with _torch_errors():
                self._ours.set_timeout(timeout)
            base.set_timeout(self, self._ours.timeout)
            self._remember_timeouts()

        def queue_push(self, key: str, value: bytes | str) -> None:
            with _torch_errors():
                self._ours.queue_push(key, value)

        def queue_pop(self, key: str, block: bool = True) -> bytes:
            self._sync_timeout()
            with _torch_errors():
                return self._ours.queue_pop(key, block)

        def queue_len(self, key: str) -> int:
            with _torch_errors():
                return self._ours.queue_len(key)

        def list_keys(self) -> list[str]:
            with _torch_errors():
                return self._ours.list_keys()

        def barrier(self, key: str, world_size: int, timeout: timedelta | None = None) -> None:
            self._sync_timeout()
            with _torch_errors():
                self._ours.barrier(key, world_size, timeout)

    return TorchCompatStore
