"""The one exception type the app reports as a single line instead of a traceback, and how
its messages name the user's settings."""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import fields

from .config import OPTIONS

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


# How messages name a setting: as the command line writes it (the app) or as export_release
# takes it (the library: the default, since the app says so when it starts a job). Both forms
# are derived from the schema (config.OPTIONS), so a new option needs no entry here.
_COMMAND_LINE: ContextVar[bool] = ContextVar("command_line", default=False)
# export_release takes these groups' fields as keywords of their own (input.trust -> trust)
_KEYWORD_GROUPS = ("input", "output")
_POSITIONAL = {"output.dir": "out_dir"}


def _forms(key: str) -> tuple[str, str]:
    """(the command line's form, export_release's form) of ``key``: ``group``,
    ``group=option`` or ``group.field``; a ``{}`` in the library's form takes the value."""
    if "=" in key:  # an option of a group: compression=none
        group, option = key.split("=", 1)
        return key, f"{group}={OPTIONS[group][option].__name__}()"
    group, _, name = key.partition(".")
    options = OPTIONS[group]
    if not name:
        return group, group
    owners = [option for option, schema in options.items()
              if name in {f.name for f in fields(schema)}]
    if not owners:
        raise KeyError(f"{key} is not an option of the schema")
    # a field only some options of the group have is written with the option that has it
    cli = key if len(owners) == len(options) else f"{group}={owners[0]} {key}"
    if key in _POSITIONAL:
        return cli, _POSITIONAL[key]
    if group in _KEYWORD_GROUPS:
        return cli, name
    return cli, f"{group}={options[owners[0]].__name__}({name}={{}})"


def setting(key: str, value: object = None) -> str:
    """``key`` (optionally ``=value``) as the user writes it: ``output.overwrite=true`` on the
    command line, ``overwrite=True`` for :func:`~audiocraft_ext.export_release`. A value
    starting with ``<`` or ``...`` is a placeholder, shown as it is. ``key`` must name an
    option of the schema (KeyError otherwise)."""
    cli, library = _forms(key)
    placeholder = isinstance(value, str) and value.startswith(("<", "..."))
    if _COMMAND_LINE.get():
        if value is None:
            return cli
        shown_value = str(value).lower() if isinstance(value, bool) else str(value)
        return f"{cli}={shown_value}"
    if value is None:
        return library.split("=", 1)[0] if "{}" in library else library
    shown_value = str(value) if placeholder else repr(value)
    return library.format(shown_value) if "{}" in library else f"{library}={shown_value}"


@contextmanager
def command_line_messages() -> Iterator[None]:
    """Within the block, messages name settings as the command line writes them."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)
