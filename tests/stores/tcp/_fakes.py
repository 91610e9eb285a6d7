"""Stand-ins the TCP server tests hand to the server instead of a real transport."""

from __future__ import annotations

from typing import Any


class Recorder:
    """A transport that records what the server writes."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:
        if not self.aborted:
            self.out += data

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return None
