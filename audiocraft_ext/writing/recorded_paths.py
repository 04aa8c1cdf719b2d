"""How a release records the paths it was made from, so that sharing it shares nothing private.

A release travels (a colleague, a cluster folder, the Hugging Face Hub); the absolute paths of
the machine that made it name home folders, user names and cluster layouts. By default every
path a release records (``export.json``, the model card, ``export_config.yaml`` and the
``xp.cfg`` inside the release files, keys as well as values) is written relative to the Dora
dir when it lies inside it (``xps/<sig>/checkpoint.th``), else as its last component, and the
home folder itself as ``~``; ``output.record_paths=absolute`` keeps them as given (and
``xp.cfg`` exactly as the checkpoint holds it).

The home folder is recognised however it is spelt: ``$HOME`` as given, the account's home when
``$HOME`` names another, the real path of each, and a folder written in a value whose real path
is the home (a symbolic link to it, or from it); a path is compared as written and as its real
path. Inside a longer value (a list override, an interpolation's default) the home folder is
written ``~``; where OmegaConf would then fail to parse the value (``~`` may not appear in a
resolver's unquoted argument) that argument is quoted: ``${oc.env:DATA,/home/me/d}`` is
recorded ``${oc.env:DATA,'~/d'}``, which resolves to ``~/d``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import GrammarParseError
from omegaconf.grammar_parser import OmegaConfGrammarLexer, OmegaConfGrammarParser, parse

from ..errors import ExportError, setting, shown

# How a re-runnable config (export_config.yaml) names the Dora dir: AudioCraft users' own
# variable, else the current folder (re-run from the Dora dir).
DORA_DIR_VARIABLE = "${oc.env:AUDIOCRAFT_DORA_DIR,.}"
# ... and a path outside it: required again (Hydra's "???"), so that a re-run names it rather
# than finding a different file of the same name
REQUIRED = "???"
TILDE = "~"  # the home folder, as every recorded value writes it


@dataclass(frozen=True)
class PathRecorder:
    """Turns the paths a release records into their shareable form."""

    dora_dir: Path | None
    absolute: bool = False
    # paths inside the Dora dir start with DORA_DIR_VARIABLE, others are REQUIRED (a config to
    # re-run), instead of relative paths and names (a record to read)
    rerunnable: bool = False

    def path(self, path: str | Path) -> str:
        """``path`` as the release records it."""
        if self.absolute:
            return str(path)
        text = str(path)
        if not _looks_absolute(text):
            return text
        full = os.path.abspath(os.path.expanduser(text))
        inside = self._inside_dora_dir(full)
        if inside is not None:
            if self.rerunnable:
                return f"{DORA_DIR_VARIABLE}/{inside}" if inside != "." else DORA_DIR_VARIABLE
            return inside
        if self.rerunnable:
            return REQUIRED
        if full in self._homes or self._real(full) in self._homes:
            return TILDE  # its last component would be the user name
        return PurePosixPath(full).name or "."

    def values(self, value: Any, changed: list[str] | None = None, key: str = "") -> Any:
        """A copy of a nest of dicts and lists with every absolute path recorded, in keys as in
        values; the dotted keys (as recorded) of what changed are appended to ``changed``.
        Raise ExportError when two keys of one mapping would be recorded alike."""
        return _map_strings(value, self._recorded, changed, key)

    def overrides(self, argv: list[str]) -> list[str]:
        """Command-line overrides (``key=value``) with their absolute paths recorded."""
        return [f"{self._recorded(k)}={self._recorded(v)}" if sep else self._recorded(k)
                for k, sep, v in (o.partition("=") for o in argv)]

    def yaml_config(self, text: str) -> tuple[str, list[str]]:
        """An ``xp.cfg`` YAML text with its absolute paths recorded (interpolations left as
        they are), and the keys changed; the text itself when nothing changes."""
        if self.absolute:
            return text, []
        content = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
        changed: list[str] = []
        recorded = self.values(content, changed)
        if not changed:
            return text, []
        return OmegaConf.to_yaml(OmegaConf.create(recorded)), changed

    @cached_property
    def _homes(self) -> frozenset[str]:
        """This machine's home folder in every spelling a value may use: ``$HOME`` as given
        (what ``~`` expands to), the account's home, and the real path of each."""
        forms = set()
        for home in (os.path.expanduser("~"), _account_home()):
            if home and os.path.isabs(home):
                forms |= {os.path.abspath(home), os.path.realpath(home)}
        return frozenset(forms - {"/"})

    def _home_pattern(self, text: str) -> re.Pattern[str] | None:
        """Any spelling of the home folder found in ``text``: those of :attr:`_homes`, and a
        folder written in it whose real path is the home (a symbolic link to it); up to the
        end of its last component (``/home/me`` is not found in ``/home/meg``), the longest
        first, so that a spelling that extends another is replaced whole."""
        spellings = set(self._homes)
        for found in _PATH_IN_TEXT.finditer(text):
            parts = found[0].rstrip("/").split("/")
            for end in range(2, len(parts) + 1):
                folder = "/".join(parts[:end])
                if folder not in spellings and self._real(folder) in self._homes:
                    spellings.add(folder)
        if not spellings:
            return None
        ordered = sorted(spellings, key=len, reverse=True)
        return re.compile("(?:" + "|".join(map(re.escape, ordered)) + r")(?![\w.\-])")

    def _real(self, path: str) -> str:
        """``os.path.realpath(path)``, asked of the file system once per recorder."""
        if path not in self._real_paths:
            self._real_paths[path] = os.path.realpath(path)
        return self._real_paths[path]

    @cached_property
    def _real_paths(self) -> dict[str, str]:
        return {}

    def _recorded(self, text: str) -> str:
        if self.absolute:
            return text
        if "${" not in text:
            return self.path(text) if _looks_absolute(text) else self._without_home(text)
        # An interpolation is a template resolved where the config is loaded (audiocraft's
        # `/checkpoint/${oc.env:USER}/...`): kept, unless it spells this machine's home out.
        pattern = self._home_pattern(text)
        if pattern is None or not pattern.search(text):
            return text
        if _looks_absolute(text):
            text = self._template_path(text)
        return self._without_home(text)

    def _template_path(self, text: str) -> str:
        """An absolute path holding interpolations, recorded as a path: the folder written
        before its first interpolation decides (inside the Dora dir: relative to it), else its
        last component, never cut inside an interpolation."""
        literal = text[:text.index("${")]
        cut = literal.rfind("/")
        folder, rest = literal[:cut] or "/", text[cut + 1:]
        inside = self._inside_dora_dir(os.path.abspath(os.path.expanduser(folder))) \
            if cut >= 0 else None
        if inside is not None:
            if self.rerunnable:
                return "/".join([DORA_DIR_VARIABLE, *([inside] if inside != "." else []), rest])
            return f"{inside}/{rest}" if inside != "." else rest
        if self.rerunnable:
            return REQUIRED
        return _last_component(text)

    def _inside_dora_dir(self, full: str) -> str | None:
        """``full`` relative to the Dora dir (as written, else as real paths), or None."""
        if self.dora_dir is None:
            return None
        root = os.path.abspath(self.dora_dir)
        for path, folder in ((full, root), (self._real(full), self._real(root))):
            if Path(path).is_relative_to(folder):
                return Path(path).relative_to(folder).as_posix()
        return None

    def _without_home(self, text: str) -> str:
        """``text`` with the home folder written ``~``, as OmegaConf still parses it: an
        unquoted resolver argument that names it is quoted. A value OmegaConf parsed but that
        cannot be written so is recorded missing (REQUIRED)."""
        pattern = self._home_pattern(text)
        if pattern is None or not pattern.search(text):
            return text
        if "${" not in text:  # OmegaConf parses only values that hold an interpolation
            return pattern.sub(TILDE, text)
        try:
            tree = parse(text)
        except GrammarParseError:  # not a value OmegaConf loads anyway
            return pattern.sub(TILDE, text)
        recorded = _render(tree, pattern)
        try:
            parse(recorded)
        except GrammarParseError:
            return REQUIRED
        return recorded


# an absolute path inside a longer value: from a "/" that follows no name character, up to
# a character that ends it in a list, an override or an interpolation
_PATH_IN_TEXT = re.compile(r"(?<![\w.~$-])/[^\s,\[\]{}()'\"=:;|$\\]+")


def _looks_absolute(text: str) -> bool:
    # "//sig/SIG", "//pretrained/NAME", "//reference/..." are audiocraft's references, not paths
    return (text.startswith("/") and not text.startswith("//")) or text == "~" \
        or text.startswith("~/")


def _account_home() -> str | None:
    """The home folder of this process's account (``$HOME`` may name another one)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError, OSError):
        return None


def _last_component(text: str) -> str:
    """What follows the last ``/`` of ``text`` that lies outside every interpolation."""
    depth, cut = 0, -1
    stripped = text.rstrip("/")
    for i, char in enumerate(stripped):
        if stripped.startswith("${", i):
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        elif char == "/" and not depth:
            cut = i
    return stripped[cut + 1:] or "."


def _render(node: Any, home: re.Pattern[str]) -> str:
    """The source text of the OmegaConf parse tree ``node`` with the home folder written
    ``~``; an unquoted resolver argument that names it is quoted, as ``~`` may not appear
    unquoted there."""
    if _is_token(node):
        return _token_text(node)
    children = list(node.getChildren())
    if isinstance(node, OmegaConfGrammarParser.PrimitiveContext) and not any(
            isinstance(c, OmegaConfGrammarParser.QuotedValueContext) for c in children):
        pieces = _pieces(children, home)
        if any(changed for _, _, changed in pieces):
            return _single_quoted([(is_inter, text) for is_inter, text, _ in pieces])
    rendered, run = [], []
    for child in children + [None]:
        if child is not None and _is_token(child):
            run.append(_token_text(child))
            continue
        rendered.append(home.sub(TILDE, "".join(run)))
        run = []
        if child is not None:
            rendered.append(_render(child, home))
    return "".join(rendered)


def _pieces(children: list[Any], home: re.Pattern[str]) -> list[tuple[bool, str, bool]]:
    """An unquoted primitive as (is an interpolation, text, home replaced): its runs of
    tokens unescaped as OmegaConf reads them, its interpolations rendered."""
    pieces, run = [], []
    for child in children + [None]:
        if child is not None and _is_token(child):
            text = child.getText()
            run.append(text[1::2] if child.symbol.type == OmegaConfGrammarLexer.ESC else text)
            continue
        if run:
            literal = "".join(run)
            recorded = home.sub(TILDE, literal)
            pieces.append((False, recorded, recorded != literal))
            run = []
        if child is not None:
            pieces.append((True, _render(child, home), False))
    return pieces


def _single_quoted(pieces: list[tuple[bool, str]]) -> str:
    """A single-quoted OmegaConf string whose value is the literal texts and interpolations
    of ``pieces``: a quote or a literal ``${`` is escaped (with the backslashes before it
    doubled), and so are backslashes that end the string or precede an interpolation."""
    out = []
    for i, (is_inter, text) in enumerate(pieces):
        if not is_inter:
            text = re.sub(r"(\\*)(\$\{|')", lambda m: m[1] * 2 + "\\" + m[2], text)
            if i + 1 == len(pieces) or pieces[i + 1][0]:
                text = re.sub(r"(\\+)$", lambda m: m[1] * 2, text)
        out.append(text)
    return "'" + "".join(out) + "'"


def _is_token(node: Any) -> bool:
    return hasattr(node, "symbol")


def _token_text(token: Any) -> str:
    return "" if token.symbol.type == OmegaConfGrammarParser.EOF else str(token.getText())


def _map_strings(value: Any, change: Callable[[str], str], changed: list[str] | None,
                 key: str) -> Any:
    if isinstance(value, dict):
        mapped: dict[Any, Any] = {}
        for k, v in value.items():
            new = change(k) if isinstance(k, str) else k
            dotted = f"{key}.{new}" if key else str(new)
            if new in mapped:
                raise ExportError(
                    f"cannot record the paths of {shown(key or 'the config')}: its keys "
                    f"{shown(k)} and another would both be recorded as {shown(new)} "
                    f"({setting('output.record_paths', 'absolute')} keeps them as given)")
            if new != k and changed is not None:
                changed.append(dotted)
            mapped[new] = _map_strings(v, change, changed, dotted)
        return mapped
    if isinstance(value, list):
        return [_map_strings(v, change, changed, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        new = change(value)
        if new != value and changed is not None:
            changed.append(key)
        return new
    return value
