"""``python -m storeharness.stores.tcp``: serve a TCPStore (options: ``server.main``)."""

from ._standalone import main

main()
