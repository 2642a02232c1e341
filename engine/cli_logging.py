"""How ``tapdiff`` shows what the engine logs: one line per record on stderr, ``tapdiff: message`` at info,
``tapdiff: warning: message`` above it, ``tapdiff: debug: logger: message`` below it. ``-v`` / ``-q`` set the
level of the engine's own loggers (``PACKAGES``); other libraries' records show from warning up. The processes
``tapdiff serve --replicas`` starts show theirs the same way.

Library code only logs (``logging.getLogger(__name__)``) and never configures logging: an application that embeds
the engine routes or quiets it through those loggers, e.g. ``logging.getLogger("engine").setLevel(logging.ERROR)``."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

PACKAGES = ("engine", "export", "kernels")
# Machine-read lines, shown as they are, without the prefix: the server's JSON access log (engine.serve.access_log)
RAW = ("engine.serve.access",)


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes (a caller's redirect, a test's capture), not as it
    was when the handler was made."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.name in RAW:
            return text
        if record.levelno == logging.INFO:
            return f"tapdiff: {text}"
        if record.levelno < logging.INFO:
            return f"tapdiff: debug: {record.name}: {text}"
        return f"tapdiff: {record.levelname.lower()}: {text}"


def show_on_stderr(level: int) -> Callable[[], None]:
    """From now on, the engine's records at ``level`` and up, and others' at warning and up, on stderr; returns
    what puts the loggers back as they were."""
    handler = StderrHandler()
    handler.setFormatter(LineFormatter())
    loggers = [logging.getLogger(name) for name in PACKAGES]
    before = [logger.level for logger in loggers]
    root = logging.getLogger()
    root.addHandler(handler)
    for logger in loggers:
        logger.setLevel(level)

    def restore() -> None:
        root.removeHandler(handler)
        for logger, was in zip(loggers, before):
            logger.setLevel(was)

    return restore


@contextmanager
def logging_to_stderr(level: int) -> Iterator[None]:
    """``show_on_stderr`` while a command runs, the loggers left as they were afterwards (``main`` may run more than
    once in a process)."""
    restore = show_on_stderr(level)
    try:
        yield
    finally:
        restore()
