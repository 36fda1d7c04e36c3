"""Imports run one way: ``guard`` (engine-free core) <- ``probes`` <- ``integrations`` <- ``axisguard_cli``.

Read from the source with ``ast`` (nothing is imported), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["guard", "probes", "integrations", "axisguard_cli"]


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) for every absolute import in one file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(layer: str) -> list[str]:
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    return [f"{path.relative_to(ROOT)}:{line} imports {package}"
            for path in sorted((ROOT / layer).rglob("*.py"))
            for line, package in sorted(imported_packages(path)) if package in above]


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_no_layer_imports_a_layer_above_it(layer):
    assert upward_imports(layer) == []


def test_the_contract_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from integrations.vllm import plugin\nimport probes.catalogue\n")
    assert imported_packages(bad) == {(2, "integrations"), (3, "probes")}


if __name__ == "__main__":  # `python -m tests.test_import_layers`: the lint step's import contract
    problems = [p for layer in LAYERS[:-1] for p in upward_imports(layer)]
    print("\n".join(problems) or "import layers: ok")
    raise SystemExit(1 if problems else 0)
