"""Finding the optional C speedups (``_speedups.c``); the Python modules are the reference."""

from __future__ import annotations

import importlib
import os
from typing import Any

from .._errors import StoreError

__all__ = ["PURE_ENV", "speedups"]

#: Set to 1 to run the pure-Python server and client even when the C speedups are built.
PURE_ENV = "STOREHARNESS_PURE_PYTHON"


def speedups(accelerate: bool | None, who: str) -> Any:
    """The C hot-path module, or ``None`` for pure Python.

    ``accelerate``: ``None`` uses it when built (and :data:`PURE_ENV` is unset), ``False``
    never, ``True`` always -- raising :class:`StoreError` naming ``who`` when it is missing.
    """
    if accelerate is False:
        return None
    module = None
    if os.environ.get(PURE_ENV, "") in ("", "0") or accelerate:
        try:
            module = importlib.import_module(f"{__package__}._speedups")
        except ImportError:
            module = None
    if accelerate and module is None:
        raise StoreError(
            f"{who}(accelerate=True): the C speedups (storeharness.stores.tcp._speedups) "
            "are not built; "
            "reinstall with a C compiler available (pip install -e .)"
        )
    return module
