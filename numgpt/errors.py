"""The one exception type for user mistakes: the CLI prints its message on one line, no traceback."""


class NumgptError(Exception):
    """A problem the user can fix (bad path, broken file, invalid option); the message says how."""
