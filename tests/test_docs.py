"""Every command shown in README.md and docs/*.md stays true: each line of a shell block that
runs the app composes with the real conf/ (and its options convert to the schema), each
`make` target exists, each relative link resolves, each Python example compiles and imports
only what `audiocraft_ext` exports, and the README stays short.

Nothing runs an export: the commands are composed in-process, as @hydra.main composes them.
"""

from __future__ import annotations

import ast
import copy
import itertools
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

import audiocraft_ext

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
# The commands this file found when it was written: fewer means the extraction broke (or the
# docs lost their examples), so the test cannot pass by checking nothing.
MIN_COMMANDS = 33
SHELL = {"bash", "sh", "shell", "console"}
# The schema's mandatory values (MISSING, `???`), which docs/configuration.md calls required:
# a command may leave one out on purpose (the app then asks for it in one line).
MISSING_FIELDS = {"input.path", "compression.name", "compression.path"}
# Hydra's own flags: they choose what to do with the config, not what it holds.
HYDRA_FLAGS = {"--help", "-h", "--hydra-help", "--resolve", "-m", "--multirun"}
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-dir", "-cd",
                          "--config-name", "-cn", "--config-path", "-cp"}
# `<new folder>`, `$AUDIOCRAFT_DORA_DIR`, `${HOME}`: any stands-in for a value of the reader's
PLACEHOLDER = re.compile(r"<[^<>\n]*>|\$\{?[A-Z_][A-Z0-9_]*\}?")
ENV_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=.*")
PARSER = OverridesParser.create()


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    where: str  # page:line
    text: str
    args: tuple[str, ...]  # the app's arguments, placeholders filled


def fenced_blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text().splitlines()
    start = lang = None
    for number, line in enumerate(lines, 1):
        fence = re.match(r"\s*```\s*([\w+-]*)\s*$", line)
        if not fence:
            continue
        if start is None:
            start, lang = number, fence.group(1).lower()
        else:
            yield Block(page, start, lang or "", tuple(lines[start:number - 1]))
            start = None
    assert start is None, f"{page.name}:{start}: a code block is never closed"


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^\s*```.*?^\s*```[^\n]*$", "", page.read_text(), flags=re.M | re.S)


def shell_lines(block: Block) -> Iterator[tuple[int, str]]:
    """Each command of a shell block with its continuation lines joined, and its line."""
    pending, first = "", 0
    for offset, line in enumerate(block.lines, 1):
        if not pending:
            first = block.line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text and not text.startswith("#"):
            yield first, text


def words(text: str) -> list[str]:
    """The words of a command line, placeholders filled, leading environment dropped."""
    split = shlex.split(PLACEHOLDER.sub("dummy", text), comments=True)
    while split and ENV_ASSIGNMENT.fullmatch(split[0]):
        split.pop(0)
    return split


def app_arguments(split: list[str]) -> list[str] | None:
    """The app's arguments if ``split`` runs the app, else None."""
    if not split:
        return None
    program = Path(split[0]).name
    if program == "audiocraft-export":
        return split[1:]
    if program.startswith("python") and split[1:2] == ["export_app.py"]:
        return split[2:]
    if program.startswith("python") and split[1:3] == ["-m", "audiocraft_ext"]:
        return split[3:]
    if split[:2] == ["make", "demo"]:
        args = [word.removeprefix("ARGS=") for word in split[2:] if word.startswith("ARGS=")]
        return shlex.split(args[-1]) if args else []
    return None


def documented_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        for block in fenced_blocks(page):
            if block.lang not in SHELL:
                continue
            for line, text in shell_lines(block):
                args = app_arguments(words(text))
                if args is not None:
                    where = f"{page.relative_to(ROOT)}:{line}"
                    commands.append(Command(where, text, tuple(args)))
    return commands


COMMANDS = documented_commands()


def overrides_of(args: tuple[str, ...]) -> tuple[list[str], bool]:
    """The Hydra overrides of a command line, and whether it asks for a sweep (-m)."""
    overrides, multirun = [], False
    rest = iter(args)
    for arg in rest:
        flag = arg.split("=", 1)[0]
        if arg in HYDRA_FLAGS:
            multirun = multirun or arg in ("-m", "--multirun")
        elif flag in HYDRA_FLAGS_WITH_VALUE:
            # --config-name export_config (a re-run from a release) names conf/export.yaml
            # plus the release's saved values: its overrides are checked against the former.
            if "=" not in arg:
                next(rest)  # its value
        elif arg.startswith("-"):
            raise AssertionError(f"a flag this test does not know: {arg}")
        else:
            overrides.append(arg)
    return overrides, multirun


def jobs_of(overrides: list[str], multirun: bool) -> list[list[str]]:
    """One list of overrides per job, as Hydra's basic sweeper splits a sweep."""
    if not multirun:
        return [overrides]
    choices = []
    for override in PARSER.parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*choices)]


def is_hydra(override: str) -> bool:
    return override.lstrip("+~").startswith("hydra")


@pytest.fixture(scope="module")
def compose_job(compose_config) -> Callable[[list[str]], DictConfig]:
    """``compose_job(overrides)``: the job's config (hydra node left out), composed once per
    list of overrides (README and docs repeat some commands; Hydra takes 0.1 s a call)."""
    composed: dict[tuple[str, ...], DictConfig] = {}

    def compose_job_(overrides: list[str]) -> DictConfig:
        if tuple(overrides) not in composed:
            uses_hydra = any(is_hydra(override) for override in overrides)
            cfg = compose_config(*overrides, hydra=uses_hydra)  # raises on a bad override
            if uses_hydra:
                with open_dict(cfg):
                    del cfg["hydra"]
            composed[tuple(overrides)] = cfg
        return composed[tuple(overrides)]

    return compose_job_


def sweep_job(first: DictConfig, first_job: list[str], job: list[str],
              compose_job: Callable[[list[str]], DictConfig]) -> DictConfig:
    """Another job of a sweep: the first job's config with the values that differ set into it
    (the schema checks their types), or composed again where a config group differs."""
    changed = [override for override in job if override not in first_job]
    if any(is_hydra(override) or "." not in override.split("=", 1)[0] for override in changed):
        return compose_job(job)
    cfg = copy.deepcopy(first)
    for override in PARSER.parse_overrides(changed):
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
    return cfg


@pytest.fixture(scope="module")
def hydra_runtime(compose_config) -> Iterator[None]:
    """HydraConfig set as @hydra.main sets it for a job, so that `${hydra:...}` values (the
    demo's dora_dir) resolve; unset again afterwards."""
    cfg = compose_config(hydra=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(ROOT / "outputs" / "docs-test")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    yield
    HydraConfig.instance().cfg = None


def test_enough_commands_were_found():
    assert len(COMMANDS) >= MIN_COMMANDS, [command.where for command in COMMANDS]
    runs = {command.text.split()[0] for command in COMMANDS}
    assert {"audiocraft-export", "make"} <= runs


@pytest.mark.parametrize("command", COMMANDS, ids=[command.where for command in COMMANDS])
def test_command_composes(command, compose_job, hydra_runtime):
    overrides, multirun = overrides_of(command.args)
    first_job, *other_jobs = jobs_of(overrides, multirun)
    first = compose_job(first_job)
    configs = [first, *(sweep_job(first, first_job, job, compose_job) for job in other_jobs)]
    for cfg in configs:
        missing = OmegaConf.missing_keys(cfg)
        assert missing <= MISSING_FIELDS, f"{command.where}: {sorted(missing)} left out"
        if not missing:
            OmegaConf.to_object(cfg)  # every value converts to the schema's type


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", makefile, flags=re.M))
    shown = []
    for page in PAGES:
        lines = [text for block in fenced_blocks(page) if block.lang in SHELL
                 for _, text in shell_lines(block)]
        lines += re.findall(r"`([^`\n]+)`", prose(page))
        for text in lines:
            split = words(text)
            if split[:1] == ["make"]:
                named = [word for word in split[1:]
                         if not word.startswith("-") and "=" not in word]
                shown.append((page.name, text))
                assert set(named) <= targets, f"{page.name}: {text}: not a target of the Makefile"
    assert len(shown) >= 10, shown


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(page), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_relative_links_resolve():
    checked = 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.is_file(), f"{page.name}: ({target}) names no file"
            assert linked.is_relative_to(ROOT), f"{page.name}: ({target}) leaves the project"
            if anchor and linked.suffix == ".md":
                assert anchor in heading_anchors(linked), f"{page.name}: ({target}): no heading"
            checked += 1
    assert checked >= 15


def test_python_examples_compile_and_import_what_the_package_exports():
    exported = set(audiocraft_ext.__all__)
    used: set[str] = set()
    blocks = [block for page in PAGES for block in fenced_blocks(page) if block.lang == "python"]
    for block in blocks:
        where = f"{block.page.relative_to(ROOT)}:{block.line}"
        tree = ast.parse(compile("\n".join(block.lines), where, "exec",
                                 flags=ast.PyCF_ONLY_AST))
        compile(tree, where, "exec")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "audiocraft_ext"):
                assert node.module == "audiocraft_ext", f"{where}: imports {node.module}"
                used |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("audiocraft_ext."), f"{where}: {alias.name}"
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == "audiocraft_ext"):
                used.add(node.attr)
    assert used, "no Python example uses audiocraft_ext"
    assert used <= exported, f"not exported by audiocraft_ext: {sorted(used - exported)}"
    for name in used:
        assert getattr(audiocraft_ext, name) is not None


def test_readme_is_short_and_names_the_ci_test_command():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, (
        f"README.md has {len(text.splitlines())} lines")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "pinned" in ci
    assert "`make test`" in text and "`make test STACK=pinned`" in text
