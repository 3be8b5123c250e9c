"""The one exception type for user mistakes: the CLI prints its message on one line, no traceback."""


class NumgptError(ValueError):
    """A problem the user can fix (bad path, broken file, invalid option); the message says how.

    A ValueError, so code written for tiktoken's or NumPy's errors (`except ValueError`) keeps working."""
