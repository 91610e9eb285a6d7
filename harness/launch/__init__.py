"""Where ranks run: on this machine (:mod:`.local`) or on hosts through their agents.

The world runner talks to ranks only through a :class:`Launcher` and the :class:`Handle` it
returns per rank (see :mod:`._base`).
"""

from ._base import Arrival, Delivery, Handle, Launcher, RankSpec, Reader, Signalled
from .local import LocalHandle, LocalLauncher

__all__ = [
    "Arrival",
    "Delivery",
    "Handle",
    "Launcher",
    "LocalHandle",
    "LocalLauncher",
    "RankSpec",
    "Reader",
    "Signalled",
]
