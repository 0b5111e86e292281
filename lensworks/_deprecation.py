"""Renamed arguments keep working for a while, with a DeprecationWarning naming the new name."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

from lensworks.model import LensworksError

__all__ = ["renamed_arguments"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed_arguments(**old_to_new: str) -> Callable[[F], F]:
    """Accept old keyword names for renamed parameters (``prompts=`` for ``data=``), warning once per call.

    Example:
        >>> @renamed_arguments(prompts="data")
        ... def f(model, data):
        ...     return data
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     f(None, prompts=[1])
        [1]
    """

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise LensworksError(f"{func.__name__}: got both {old}= and {new}=; {old}= is the old name of {new}=")
                    warnings.warn(f"{func.__name__}: the argument {old}= is now called {new}=", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
