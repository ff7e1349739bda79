"""The one exception type the CLI turns into a clear message instead of a traceback."""


class BenchError(Exception):
    """A problem the user can fix: the message names the file or option and says how."""
