"""TCPStore: PyTorch's c10d TCPStore wire protocol, as codec, server, client and facade."""

from ._standalone import ServerProcess
from .client import TCPClient
from .codec import Limits, ProtocolError
from .server import TCPServer, bind_listener
from .store import TCPStore

__all__ = [
    "Limits",
    "ProtocolError",
    "ServerProcess",
    "TCPClient",
    "TCPServer",
    "TCPStore",
    "bind_listener",
]
