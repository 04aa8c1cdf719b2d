"""The package's architecture, held: which subpackage may import which.

Read from the source with ``ast`` (every import, lazy ones inside functions included), so a
new module cannot cross a boundary unnoticed:
- ``untrusted/`` reads bytes from checkpoints and user folders: it imports neither audiocraft,
  transformers, Hydra, nor any package that writes, validates, reports or runs the app;
- only ``app/`` imports Hydra;
- the subpackages form layers: each imports only the core and the layers below it, so
  there is no cycle between them; nor between modules at import time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "audiocraft_ext"
CORE = {"errors", "config", "families"}  # below every layer
FACE = {"__init__", "__main__"}  # the package's entry points: above every layer
# bottom to top: a layer may import the core, itself and the layers before it
LAYERS = ["untrusted", "writing", "reporting", "validation", "transformers_format", "onnx_format",
          "pipeline", "app"]
UNTRUSTED_MAY_NOT = ("audiocraft", "transformers", "hydra", "hydra_plugins",
                     *(f"audiocraft_ext.{layer}" for layer in LAYERS if layer != "untrusted"))


def _modules() -> dict[str, Path]:
    return {".".join(("audiocraft_ext", *p.relative_to(PACKAGE).with_suffix("").parts)): p
            for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, top_level_only: bool = False) -> Iterator[str]:
    """The absolute names of the modules ``name`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            # `from . import x` and `from .pkg import module` import modules too
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _layer(module: str) -> str | None:
    """The layer of one of our modules (or of a name imported from it); None for the core,
    the face and anything else."""
    parts = module.split(".")
    return parts[1] if parts[0] == "audiocraft_ext" and len(parts) > 1 and parts[1] in LAYERS \
        else None


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


MODULES = _modules()


def test_every_module_belongs_to_the_core_or_a_layer():
    unplaced = [m for m in MODULES if _layer(m) is None and m.split(".")[1] not in CORE | FACE]
    assert not unplaced, unplaced
    assert len(MODULES) > 40  # the walk found the package


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "untrusted"))
def test_untrusted_input_imports_no_audiocraft_transformers_hydra_or_writer(module):
    crossing = sorted({i for i in _imports(module, MODULES[module])
                       if any(_within(i, banned) for banned in UNTRUSTED_MAY_NOT)})
    assert not crossing, f"{module} imports {crossing}"


def test_only_the_application_imports_hydra():
    importers = sorted(m for m, path in MODULES.items() if _layer(m) != "app"
                       and any(_within(i, "hydra") or _within(i, "hydra_plugins")
                               for i in _imports(m, path)))
    assert not importers, importers


def test_layers_import_only_the_core_and_the_layers_below():
    crossing = []
    for module, path in MODULES.items():
        if module.split(".")[1] in FACE:
            continue
        own = _layer(module)
        allowed = set(LAYERS[: LAYERS.index(own) + 1]) if own else set()
        for imported in _imports(module, path):
            target = _layer(imported)
            if target is not None and target not in allowed and _within(imported,
                                                                       "audiocraft_ext"):
                crossing.append(f"{module} -> {imported}")
    assert not crossing, crossing


def test_no_import_cycle_between_modules():
    """Import-time edges (module-level statements) between our modules form no cycle."""
    graph = {m: {i for i in _imports(m, p, top_level_only=True) if i in MODULES and i != m}
             for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path, module, nxt]))
            if nxt not in state:
                visit(nxt, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
