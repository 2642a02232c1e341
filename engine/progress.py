"""Progress of long work as log lines, at most one every ``EVERY_S`` seconds: a terminal, a pipe and a log file
all show where the work is, and an application quiets it like any other engine message (its logger's level).
Work that ends within ``EVERY_S`` logs nothing."""
from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator, TypeVar

EVERY_S = 5.0

T = TypeVar("T")


class Progress:
    """``done`` of ``total`` units of ``what``, logged at info on ``logger`` by ``advance``/``advance_to`` when
    ``every_s`` has passed since the start or the last line, and once more by ``close`` when any line was
    logged. ``enabled=False``: nothing is logged (a caller's own switch, e.g. one rank of several)."""

    def __init__(self, logger: logging.Logger, what: str, total: float, unit: str = "", done: float = 0,
                 enabled: bool = True, every_s: float = EVERY_S):
        self.logger, self.what, self.total, self.unit = logger, what, total, unit
        self.done, self.enabled, self.every_s = done, enabled, every_s
        self.start = self.last = time.monotonic()
        self.lines = 0

    def advance(self, n: float = 1, note: str = "") -> None:
        self.advance_to(self.done + n, note)

    def advance_to(self, done: float, note: str = "") -> None:
        """``done`` units so far; ``note``: what else the line says (a step count, a loss)."""
        self.done = done
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            self._line(note)

    def close(self, note: str = "") -> None:
        if self.enabled and self.lines:
            self._line(note)

    def _line(self, note: str) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.lines += 1
        unit = f" {self.unit}" if self.unit else ""
        self.logger.info("%s: %g/%g%s%s (%.0f s)", self.what, self.done, self.total, unit, f", {note}" if note else "",
                         time.monotonic() - self.start)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tracked(items: Iterable[T], logger: logging.Logger, what: str, total: int | None = None, unit: str = "",
            enabled: bool = True) -> Iterator[T]:
    """``items``, counting them as ``Progress`` of ``what`` (``total``: ``len(items)`` unless given)."""
    with Progress(logger, what, len(items) if total is None else total, unit, enabled=enabled) as progress:
        for item in items:
            yield item
            progress.advance()
