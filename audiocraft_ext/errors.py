"""The one exception type the app reports as a single line instead of a traceback."""

MAX_MESSAGE = 1000  # characters of an error line: enough for two long paths and a reason
MAX_SHOWN = 120  # characters of one value taken from a file (a name, a key, a config value)


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one line of printable characters, at most ``limit`` long.

    Messages quote names and values read from untrusted files: a newline would forge a second
    log line, a control character would reach the terminal, a 200,000-character name would
    flood every log. Non-printable characters are shown escaped, as ``repr`` shows them.
    """
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """A value from a file, quoted for a message: ``repr`` for strings, capped."""
    return one_line(repr(value) if isinstance(value, str) else str(value), limit)


class ExportError(Exception):
    """A problem with the user's input or environment, explained in one sentence.

    The message is made one printable line of at most :data:`MAX_MESSAGE` characters, whatever
    the caller put into it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(str(message)))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name when it has none), safe to
    print."""
    text = str(exc).strip()
    return one_line(text.splitlines()[0] if text else type(exc).__name__)
