"""A user's own store as a target: ``--store module.path:factory``, or an entry point.

The factory is called with the run's working directory (a :class:`pathlib.Path` shared by every
rank of the run, empty at the start) and returns an open :class:`~storeharness.stores.Store`; a
``Store`` subclass whose constructor takes that directory is a factory.  What the target can
take is read from the store: its class's ``capabilities`` (from the class itself, or from the
factory's return annotation), overridden by ``capabilities``/``workers`` attributes on the
factory.  A store that declares ``cross_process`` runs process and thread ranks, each opening
its own handle with the factory; any other store runs thread ranks, which share the one store
the runner opened through ``clone()`` (so that closing a stuck rank's handle can wake it).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...stores import Capability, Store, UnsupportedOperation
from ._base import TargetSpec
from .local import LocalTarget

__all__ = ["Factory", "load_factory", "user_target"]

#: ``factory(workdir) -> Store``
Factory = Callable[[Path], Store]


def load_factory(ref: str) -> Factory:
    """Import ``module.path:attr`` (the current directory importable, as uvicorn does).

    Raises ``ValueError`` naming what is wrong and how to fix it.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--store {ref!r}: a user store is given as module.path:factory")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"--store {ref!r}: cannot import module {module_name!r} ({exc}); run from the "
            "directory that contains it, or install it"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"--store {ref!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise ValueError(f"--store {ref!r}: {attr} is not callable (give a Store class or factory)")
    factory: Factory = obj
    return factory


def _store_class(factory: Any) -> type[Store] | None:
    if isinstance(factory, type):
        return factory if issubclass(factory, Store) else None
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: nothing to learn from them
        return None
    ret = hints.get("return")
    return ret if isinstance(ret, type) and issubclass(ret, Store) else None


def _describe(factory: Any, ref: str) -> TargetSpec:
    cls = _store_class(factory)
    caps = getattr(factory, "capabilities", None)
    if caps is None:
        caps = cls.capabilities if cls is not None else frozenset()
    try:
        capabilities = frozenset(Capability(c) for c in caps)
    except ValueError as exc:
        known = ", ".join(c.value for c in Capability)
        raise ValueError(f"--store {ref!r}: {exc}; capabilities are {known}") from None
    cross = Capability.CROSS_PROCESS in capabilities
    workers = tuple(getattr(factory, "workers", ("process", "thread") if cross else ("thread",)))
    for kind in workers:
        if kind not in ("process", "thread"):
            raise ValueError(f"--store {ref!r}: workers {workers!r}; use 'process'/'thread'")
    if "process" in workers and not cross:
        raise ValueError(
            f"--store {ref!r}: process ranks need a store that declares the cross_process "
            "capability (ranks in other processes must see the same data)"
        )
    what = cls.__name__ if cls is not None else getattr(factory, "__name__", "factory")
    return TargetSpec(ref, f"your store {what} (from {ref})", workers, capabilities, kind="user")


def _call(factory: Factory, workdir: Path, timeout: float) -> Store:
    store = factory(workdir)
    if not isinstance(store, Store):
        raise TypeError(
            f"the store factory {getattr(factory, '__qualname__', factory)!r} returned "
            f"{type(store).__name__}, not a storeharness.stores.Store"
        )
    store.set_timeout(timeout)
    return store


def _clone(store: Store, workdir: Path, timeout: float) -> Callable[[], Store]:
    """Thread ranks of a store that is not cross-process share the runner's, through clones."""
    try:
        store.clone().close()
    except (UnsupportedOperation, NotImplementedError):
        raise ValueError(
            f"{type(store).__name__} does not declare cross_process and has no clone(): thread "
            "ranks each need a handle on the runner's store.  Implement clone() (a new handle "
            "on the same data, whose close() wakes calls blocked through it), or declare "
            "Capability.CROSS_PROCESS if handles the factory opens share the data"
        ) from None
    return store.clone


def _reopen(factory: Factory, store: Store, workdir: Path, timeout: float) -> Callable[[], Store]:
    return functools.partial(_call, factory, workdir, timeout)


def user_target(ref: str, factory: Factory | None = None) -> LocalTarget:
    """The target of a user's store factory ``ref`` (``module.path:factory``).

    Raises ``ValueError`` when it cannot be imported or described.
    """
    factory = load_factory(ref) if factory is None else factory
    spec = _describe(factory, ref)
    make = functools.partial(_call, factory)
    if "process" in spec.workers:
        return LocalTarget(spec, make, functools.partial(_reopen, factory))
    return LocalTarget(spec, make, _clone)
