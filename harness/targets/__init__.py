"""The stores a world can run against: one registry, open to users.

A target is named by

- a built-in name (``hash``, ``file``, ``tcp``, ``tcp-pure``, ``prefix``, ``prefix-hash``,
  ``prefix-file``; torch's ``torch-tcp``, ``torch-file``, ``torch-hash``; the interop pairings
  ``torch-client``, ``ours-on-torch``, ``ours-on-torch-legacy``; ``etcd`` (our EtcdStore) and
  ``torch-etcd`` (torch's v2 EtcdStore), on an etcd started on loopback (with ``--hosts``,
  on the store host));
- a name a package registers in the ``storeharness.targets`` entry-point group (the entry point
  loads a :class:`Target`, or a store factory as below);
- ``module.path:factory``, a user's store factory (see :mod:`.user`);
- ``tcp://HOST:PORT``, a TCPStore server already running (see :mod:`.remote`).

:func:`get` is the one place that chooses; every kind lives in a module of its own behind the
small :class:`Target` protocol (``_base.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from ._base import MARK, Endpoint, Target, TargetSpec, open_checked
from .etcd import etcd_targets
from .local import file_target, hash_target
from .prefix import PrefixTarget
from .remote import RemoteTarget
from .server import tcp_targets
from .torch import torch_missing, torch_targets
from .user import user_target

__all__ = [
    "DEFAULT",
    "ENTRY_POINT_GROUP",
    "MARK",
    "Endpoint",
    "Target",
    "TargetSpec",
    "builtin",
    "expand",
    "get",
    "names",
    "open_checked",
    "start",
    "torch_missing",
]

#: What runs when nothing is asked for: our own stores.
DEFAULT = ("hash", "file", "tcp", "prefix")
ENTRY_POINT_GROUP = "storeharness.targets"


@functools.cache
def builtin() -> dict[str, Target]:
    """The bundled targets, by name, in a fixed order."""
    hashed, filed = hash_target(), file_target()
    tcp, tcp_pure = tcp_targets()
    found: list[Target] = [
        hashed, filed, tcp, tcp_pure,
        PrefixTarget("prefix", tcp), PrefixTarget("prefix-hash", hashed),
        PrefixTarget("prefix-file", filed),
        *torch_targets(),
        *etcd_targets(),
    ]  # fmt: skip
    return {t.spec.name: t for t in found}


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every target that has a name: the bundled ones, then those packages register."""
    return [*builtin(), *(n for n in _entry_points() if n not in builtin())]


@functools.cache
def get(name: str) -> Target:
    """The target called ``name`` (see the module docstring for the forms a name takes).

    Raises ``ValueError`` naming what is wrong and what the choices are.
    """
    if name in builtin():
        return builtin()[name]
    if name in _entry_points():
        return _from_entry_point(name)
    if name.startswith("tcp://"):
        return RemoteTarget(name)
    if ":" in name and "/" not in name:
        return user_target(name)
    raise ValueError(
        f"unknown store {name!r}; choose from {', '.join(names())}, give your own store as "
        "module.path:factory, or a running server as tcp://HOST:PORT"
    )


def _from_entry_point(name: str) -> Target:
    ep = _entry_points()[name]
    try:
        obj = ep.load()
    except Exception as exc:
        raise ValueError(
            f"store {name!r} (entry point {ep.value} in group {ENTRY_POINT_GROUP}) "
            f"failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(obj, Target):
        return obj
    if callable(obj):
        return user_target(name, obj)
    raise ValueError(
        f"store {name!r}: entry point {ep.value} is neither a Target nor a store factory"
    )


def start(name: str, workdir: str | Path, *, timeout: float, proxy: bool = False) -> Endpoint:
    """Start target ``name``'s endpoint for one run in ``workdir`` (see :meth:`Target.start`)."""
    return get(name).start(Path(workdir), timeout=timeout, proxy=proxy)


def expand(asked: Iterable[str], default: Iterable[str] = DEFAULT) -> tuple[list[str], list[str]]:
    """Resolve ``--store`` values: ``all`` is every available named target.

    Returns ``(names, skipped)`` where ``skipped`` says which named targets ``all`` left out and
    why (torch not installed, say).  Raises ``ValueError`` for an unknown or unavailable store
    asked for by name.
    """
    out: list[str] = []
    skipped: list[str] = []
    for name in list(asked) or list(default):
        if name == "all":
            for each in names():
                why = get(each).unavailable()
                if why is None:
                    out.append(each)
                else:
                    skipped.append(f"{each}: {why}")
            continue
        why = get(name).unavailable()
        if why is not None:
            raise ValueError(f"--store {name}: {why}")
        out.append(name)
    return list(dict.fromkeys(out)), skipped
