"""The store family: the Store contract, its errors, and the bundled backends.

``stores`` knows nothing of the harness, pytest or multiprocess; everything public is here::

    from storeharness.stores import Store, HashStore, FileStore, PrefixStore, TCPStore
    from storeharness.stores import StoreError, StoreTimeout, QueueEmpty
    from storeharness.stores import rendezvous  # torch's rendezvous(url), over our stores

torch's error names are here too, with torch's hierarchy, so code written against
``torch.distributed`` catches our errors unchanged::

    import storeharness.stores as dist
    try:
        store.queue_pop("q", block=False)
    except dist.QueueEmptyError:  # our QueueEmpty is one
        ...
"""

from ._base import Capability, Store
from ._errors import (
    DistError,
    DistNetworkError,
    DistStoreError,
    QueueEmpty,
    QueueEmptyError,
    StoreBindError,
    StoreBroken,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreValueError,
    UnsupportedOperation,
)
from ._rendezvous import RendezvousHandler, register_rendezvous_handler, rendezvous
from ._types import (
    DEFAULT_TIMEOUT,
    KeyLike,
    TimeoutLike,
    ValueLike,
    as_key,
    as_keys,
    as_seconds,
    as_value,
    check_amount,
    compare_set_outcome,
    next_counter,
)
from .file import FileStore
from .hash import HashStore
from .prefix import PrefixStore
from .tcp import TCPStore

# For store authors (a Store subclass of your own): torch's conversions and rules, so your store
# reads keys, values, timeouts, counters and compare_set exactly as ours and torch's do.
__all__ = [
    "DEFAULT_TIMEOUT",
    "Capability",
    "DistError",
    "DistNetworkError",
    "DistStoreError",
    "FileStore",
    "HashStore",
    "KeyLike",
    "PrefixStore",
    "QueueEmpty",
    "QueueEmptyError",
    "RendezvousHandler",
    "Store",
    "StoreBindError",
    "StoreBroken",
    "StoreClosed",
    "StoreError",
    "StoreTimeout",
    "StoreValueError",
    "TCPStore",
    "TimeoutLike",
    "UnsupportedOperation",
    "ValueLike",
    "as_key",
    "as_keys",
    "as_seconds",
    "as_value",
    "check_amount",
    "compare_set_outcome",
    "next_counter",
    "register_rendezvous_handler",
    "rendezvous",
]
