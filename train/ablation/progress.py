"""The console of a long ablation: one line per finished cell, with what is left and when it should end.

A grid of a few dozen cells runs for minutes to days; the researcher watching it wants to know which cell
ended with what accuracy and how long the rest will take, not the trainer's per-step dictionaries (those
stay in each run's ``train_log.jsonl``). The estimate weights every cell by its planned optimiser steps, so
a whole-pool cell counts for more than a small subset's, and it counts only the cells trained in this
process's lifetime (cells finished earlier are reused in no time and would make the rate look too fast).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class CellProgress:
    """Progress over cells weighted by their planned steps; ``done`` returns the line to print."""

    total_cells: int
    total_steps: int
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    cells_done: int = field(default=0, init=False)
    steps_done: int = field(default=0, init=False)
    steps_trained: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def done(self, name: str, steps: int, outcome: str, *, reused: bool = False) -> str:
        """Record one finished cell (``reused``: finished before this run) and word its line."""
        self.cells_done += 1
        self.steps_done += steps
        if not reused:
            self.steps_trained += steps
        elapsed = self.clock() - self.started
        return (f"[{self.cells_done}/{self.total_cells}] {name}: {outcome} | elapsed {_duration(elapsed)}, "
                f"{self._eta(elapsed)}")

    def _eta(self, elapsed: float) -> str:
        left = self.total_steps - self.steps_done
        if left <= 0:
            return "all cells done"
        if self.steps_trained == 0:
            return "ETA unknown"
        return f"ETA {_duration(left * elapsed / self.steps_trained)}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
