"""The one exception type that tl_lape raises for user errors."""

__all__ = ["LapeError"]


class LapeError(ValueError):
    """Raised when tl_lape is given input it cannot use.

    Every message says what was wrong, the value received and what to do instead.
    It subclasses :class:`ValueError`, so ``except ValueError`` also catches it.
    """
