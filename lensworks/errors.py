"""The errors lensworks raises for input it cannot use. Imports nothing, so that the command
line can report a user error without loading torch.

Every user error is a :class:`LensworksError` (a ``ValueError``): a path that is not a
checkpoint, a config that contradicts its weights, text the vocabulary cannot spell, an option
out of range. Values that are not finite (NaN or inf in weights or activations) raise
:class:`NonFiniteError`, which is also a ``FloatingPointError`` for code that catches that.
"""

from __future__ import annotations

__all__ = ["LensworksError", "NonFiniteError"]


class LensworksError(ValueError):
    """Raised for input lensworks cannot use; the message names what was expected and given.

    Example:
        >>> try:
        ...     raise LensworksError("seq_len must be a positive integer, got 2.5")
        ... except ValueError as err:
        ...     print(err)
        seq_len must be a positive integer, got 2.5
    """


class NonFiniteError(LensworksError, FloatingPointError):
    """NaN or inf where a finite number is needed (weights, activations, a threshold).

    Example:
        >>> issubclass(NonFiniteError, LensworksError) and issubclass(NonFiniteError, FloatingPointError)
        True
    """
