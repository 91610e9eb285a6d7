"""EtcdStore: the Store contract on an etcd (v3) cluster.

Importing this package imports no etcd client: the client (``pip install 'storeharness[etcd]'``)
is loaded when the first store opens, so ``import storeharness.stores`` works without it.
"""

from . import _rendezvous as _rendezvous  # registers etcd:// (imports no client)
from ._layout import parse_endpoints
from ._transport import MISSING_EXTRA
from .store import EtcdStore

__all__ = ["MISSING_EXTRA", "EtcdStore", "parse_endpoints"]
