"""What a cached module does in one step (shared by plans, methods and the engine)."""

from __future__ import annotations

import enum


class Action(enum.IntEnum):
    FULL = 0
    PARTIAL = 1
    REUSE = 2
    SKIP = 3
    FORECAST = 4

    @property
    def letter(self) -> str:
        return "FTRAP"[self.value]
