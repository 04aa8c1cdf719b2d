"""The one exception type the app reports as a single line instead of a traceback."""


class ExportError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""
