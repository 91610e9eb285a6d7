"""Finding processes a run left behind, wherever they were reparented."""

from __future__ import annotations

import os

TAG = "STOREHARNESS_RUN_TAG"


def tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``STOREHARNESS_RUN_TAG=tag``.

    Forked children keep the environment of the process that was exec'd, and exec'd children
    inherit it, so every descendant of a process started with the tag carries it.
    """
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone, or not ours to read
        if needle in environ and state != "Z":
            found.append(int(entry))
    return found
