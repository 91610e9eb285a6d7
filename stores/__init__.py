"""The store family: the Store contract, its errors, and the bundled backends.

``stores`` knows nothing of the harness, pytest or multiprocess; everything public is here::

    from stores import Store, HashStore, FileStore, PrefixStore, TCPStore
    from stores import StoreError, StoreTimeout, QueueEmpty
"""

from ._base import Capability, Store
from ._errors import (
    QueueEmpty,
    StoreBroken,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreValueError,
    UnsupportedOperation,
)
from ._types import DEFAULT_TIMEOUT
from .file import FileStore
from .hash import HashStore
from .prefix import PrefixStore
from .tcp import TCPStore

__all__ = [
    "DEFAULT_TIMEOUT",
    "Capability",
    "FileStore",
    "HashStore",
    "PrefixStore",
    "QueueEmpty",
    "Store",
    "StoreBroken",
    "StoreClosed",
    "StoreError",
    "StoreTimeout",
    "StoreValueError",
    "TCPStore",
    "UnsupportedOperation",
]
