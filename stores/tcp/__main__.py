"""``python -m storeharness.stores.tcp``: serve a TCPStore (options: ``server.main``)."""

from .server import main

main()
