"""Where ranks run: on this machine (:mod:`.local`) or on hosts through their agents.

The world runner talks to ranks only through a :class:`Launcher` and the :class:`Handle` it
returns per rank (see :mod:`._base`).
"""

from ._base import Arrival, Delivery, Handle, Launcher, RankSpec, Reader, Signalled
from .local import LocalHandle, LocalLauncher


def __getattr__(name: str) -> object:
    # The remote launcher needs execnet (the multihost extra): imported only when asked for.
    if name in ("RemoteHandle", "RemoteLauncher"):
        from . import remote

        return getattr(remote, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Arrival",
    "Delivery",
    "Handle",
    "Launcher",
    "LocalHandle",
    "LocalLauncher",
    "RankSpec",
    "Reader",
    "RemoteHandle",
    "RemoteLauncher",
    "Signalled",
]
