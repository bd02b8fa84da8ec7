"""The one exception type the command line turns into a one-line error message."""


class UnclipError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""
