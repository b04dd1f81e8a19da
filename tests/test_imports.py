"""The packages' import graph: every module imports alone, and no two modules import each other (even
through a function-level import, which would hide a cycle from an import test)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datasets_spec", "curate", "train")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in MODULES and t != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    # A package's __init__ re-exporting its submodules is not a cycle: a submodule importing a sibling
    # goes through the package first, which is fine as long as the siblings do not import each other.
    graph = {}
    for name, path in MODULES.items():
        own = path.name == "__init__.py"
        graph[name] = {t for t in _imports(name, path) if not (own and t.startswith(name + "."))}
    graph = {name: {t for t in targets if t not in PACKAGES} for name, targets in graph.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_alone(name):
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_under_500_lines(name):
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES


# The layers, bottom first: a module may import its own layer and the ones below, never one above
# (datasets_spec <- curate <- train; bench and tests sit on top and are not scanned here).
LAYERS = {package: depth for depth, package in enumerate(PACKAGES)}
# Known upward imports, all function-level: curate's model-backed features load train's models (hidden
# states of a run, per-sample loss, LoRA gradients). The model loading they need is to move where both
# layers may import it; until then this list may only shrink (a new upward import fails the test below,
# and a listed module that stops importing upward fails the one after it).
UPWARD_IMPORTS = {"curate.embed_reference", "curate.score_models", "curate.grad_features"}


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def _upward(name: str) -> set[str]:
    return {t for t in _imports(name, MODULES[name]) if _layer(t) > _layer(name)}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_down_the_layers(name):
    if name in UPWARD_IMPORTS:
        return
    assert not _upward(name), f"{name} imports a higher layer: {sorted(_upward(name))}"


@pytest.mark.parametrize("name", sorted(UPWARD_IMPORTS))
def test_listed_upward_imports_are_still_there(name):
    assert _upward(name), f"{name} no longer imports a higher layer: drop it from UPWARD_IMPORTS"


def test_layer_rule_sees_function_level_imports(tmp_path, monkeypatch):
    """A function-level ``from train... import`` in a curate module is found (hand-written module)."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from train.config import TrainConfig\n    return TrainConfig\n")
    monkeypatch.setitem(MODULES, "curate.probe", source)
    assert _upward("curate.probe") == {"train.config"}
