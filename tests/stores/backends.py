"""The backends the contract and state-machine tests run on: derived from the harness's targets.

Our stores and the interop pairings (torch's client on our server, ours on torch's servers) are
checked against the contract; torch's own stores are targets for the scenario library, where
their differences are documented, not contract subjects here.
"""

from __future__ import annotations

from pathlib import Path

from storeharness.harness import targets
from storeharness.stores.conformance import Backend

#: Our stores.
NAMES = [n for n in targets.names() if targets.get(n).spec.kind == "ours"]
#: Interoperability pairings; they need torch (``pip install torch==2.13.0``).
TORCH_NAMES = [n for n in targets.names() if targets.get(n).spec.kind == "interop"]


def torch_missing() -> str | None:
    """Why the torch pairings cannot run here, or ``None``."""
    return targets.torch_missing()


def make_backend(name: str, tmp_dir: str) -> Backend:
    """Backend ``name`` whose files live in ``tmp_dir``; cross-process parties are processes."""
    return targets.get(name).backend(Path(tmp_dir))
