"""Progress of a long job: a tqdm bar with rate and ETA on a terminal, a line now and then elsewhere.

As the evaluator does (engine/evaluator.py): the bar is drawn on stderr only when stderr is a
terminal, since a log file would fill with its redraws; where it is not (a log, CI, nohup), one
line "desc: done/total unit, rate unit/s, eta S s" is written to stderr every ``every`` seconds.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts finished items of a job of ``total`` items (None when unknown: no ETA then).

    Args:
        total: items to do, or None.
        unit: what an item is ("img", "frame"), shown in the rate.
        desc: the job's name, first on the bar and on each line.
        every: seconds between two lines when stderr is not a terminal.
        file: where bar and lines go (stderr by default; its ``isatty`` picks between them).
    """

    def __init__(self, total: int | None, unit: str, desc: str, every: float = 30.0, file: TextIO | None = None):
        from tqdm import tqdm

        self.file = file if file is not None else sys.stderr
        self.total, self.unit, self.desc, self.every = total, unit, desc, every
        self.done = 0
        self.started = self._last = time.perf_counter()
        terminal = bool(getattr(self.file, "isatty", lambda: False)())
        self._bar = tqdm(total=total, unit=unit, desc=desc, file=self.file, dynamic_ncols=True, disable=not terminal)

    def update(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)
        now = time.perf_counter()
        if self._bar.disable and now - self._last >= self.every:
            self._last = now
            print(self.line(now), file=self.file, flush=True)

    def line(self, now: float | None = None) -> str:
        """'desc: done/total unit, R unit/s, eta S s' (no total, no eta)."""
        seconds = (now if now is not None else time.perf_counter()) - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        eta = (f", eta {(self.total - self.done) / rate:.0f} s" if self.total is not None and rate > 0 else "")
        return f"{self.desc}: {self.done}{of} {self.unit}, {rate:.2f} {self.unit}/s{eta}"

    def write(self, message: str, file: TextIO | None = None) -> None:
        """Print a message without breaking the bar (to stdout by default)."""
        self._bar.write(message, file=file if file is not None else sys.stdout)

    def close(self) -> float:
        """End the bar; returns the seconds since the start."""
        self._bar.close()
        return time.perf_counter() - self.started

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
