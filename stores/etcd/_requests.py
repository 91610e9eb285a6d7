"""What the operation mixins (:mod:`.reads`, :mod:`.writes`, :mod:`.queues`) use of
:class:`EtcdStore`: its state and request helpers, declared once for the type checker."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import queue

    from .._types import KeyLike, ValueLike
    from ._layout import Layout
    from ._op import Op
    from ._transport import Transport
    from ._watch import Watch

__all__ = ["Requests"]


class Requests:
    """Base of the operation mixins; :class:`EtcdStore` defines all of this."""

    if TYPE_CHECKING:
        _layout: Layout
        _t: Transport
        _timeout: float
        _sleepers: set[queue.SimpleQueue[Any]]
        _sleepers_lock: threading.Lock
        rpc: Any

        def _op(self, name: str, keys: Sequence[str], time_limit: float | None = None) -> Op: ...
        def _call(
            self, op: Op, method: str, build: Callable[[], Any], service: str = "KV"
        ) -> Any: ...
        def _once(self, op: Op, body: Callable[[bytes], Any]) -> Any | None: ...
        def _mark(self, seq: bytes) -> Any: ...
        def _put(self, key: bytes, value: bytes) -> Any: ...
        def _range(self, key: bytes, end: bytes | None = None, **kw: Any) -> Any: ...
        def _compare(self, key: bytes, target: str, result: str = "EQUAL", **value: Any) -> Any: ...
        def _start_watch(
            self, watch: Watch, op: Op, targets: list[tuple[bytes, bytes | None]], revision: int
        ) -> bool: ...
        def _pairs(
            self, keys: Sequence[KeyLike], values: Sequence[ValueLike]
        ) -> tuple[list[str], list[bytes]]: ...
