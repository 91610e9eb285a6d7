"""``python -m stores.tcp``: serve a TCPStore (see ``stores.tcp.server.main`` for the options)."""

from .server import main

main()
