"""The one exception type for user mistakes: the CLI prints its message on one line, no traceback."""


class NumgptError(ValueError):
    """A problem the user can fix (bad path, broken file, invalid option); the message says how.

    A ValueError, so code written for tiktoken's or NumPy's errors (`except ValueError`) keeps working."""


class UnknownOptionError(NumgptError, TypeError):
    """A misspelt option name: a TypeError, as Python raises for any unknown keyword, and a NumgptError."""


def describe(value: object) -> str:
    """A value as an error message shows it: its repr and, where that could mislead, its type."""
    shown = repr(value)
    return shown if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{shown} ({type(value).__name__})"


def whole_number(name: str, value: object, *, minimum: int | None = None, extra: str = "") -> int:
    """`value` as an int, or a NumgptError naming `name`: a bool, a float or a string is not a whole number."""
    import numbers
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise NumgptError(f"{name} must be a whole number (an int){extra}, got {describe(value)}")
    if minimum is not None and value < minimum:
        raise NumgptError(f"{name} must be >= {minimum}{extra}, got {value}")
    return int(value)


def real_number(name: str, value: object, *, rule: str = "") -> float:
    """`value` as a finite float, or a NumgptError naming `name` and `rule` (what it accepts)."""
    import math
    import numbers
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise NumgptError(f"{name} must be a number{rule}, got {describe(value)}")
    if not math.isfinite(value):
        raise NumgptError(f"{name} must be a finite number{rule}, got {value}")
    return float(value)
