"""Values from a checkpoint, a config or a user's folder, made inert in a Markdown card.

The Hugging Face Hub renders a release's ``README.md``: a metric name such as
``<script>...</script>`` or ``[click](javascript:...)`` must show as text, a ``---`` line must
not end the front matter, a 10 MB name must not make a 10 MB card. Every such value goes
through one of these: a code span (Markdown and HTML are not interpreted inside), a fenced
block whose fence no content can close, or a string literal for a code sample.
"""

from __future__ import annotations

import json
import re

from ..errors import one_line

MAX_SHOWN = 120  # characters of one value from a file shown in the card


def code(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as one inline code span: one printable line of at most ``limit`` characters,
    delimited by more backticks than it holds in a row."""
    text = one_line(str(value), limit)
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def fenced(lines: list[str], info: str) -> list[str]:
    """``lines`` as a fenced code block whose fence is longer than any backtick run inside."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{info}", *lines, fence]


def literal(value: str) -> str:
    """``value`` as a Python (and JSON) string literal for a code sample."""
    return json.dumps(value)


def more(shown: int, total: int) -> str:
    """`` (N more)`` when only ``shown`` of ``total`` items are listed, else nothing."""
    return f" ({total - shown} more)" if total > shown else ""
