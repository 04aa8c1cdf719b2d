"""The one exception type the app reports as a single line instead of a traceback."""


class ExportError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
