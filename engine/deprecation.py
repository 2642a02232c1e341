"""Spellings the Python API shipped and has since renamed: they keep working, with a ``DeprecationWarning``."""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def renamed_keyword(old: str, new: str) -> Callable[[F], F]:
    """Decorator: the function's parameter ``new`` may still be passed by keyword as ``old``, its deprecated
    spelling. That warns (``DeprecationWarning``, pointing at the caller) and passes the value on as ``new``;
    both given, ``new`` by keyword or by position, is a TypeError naming both."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if old in kwargs:
                if new in kwargs or new in signature.bind_partial(*args).arguments:
                    raise TypeError(f"{fn.__qualname__}() got both {new}= and {old}= (its deprecated spelling); "
                                    f"give {new}= alone")
                warnings.warn(f"{fn.__qualname__}(): {old}= is deprecated; use {new}=", DeprecationWarning,
                              stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
