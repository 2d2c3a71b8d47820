"""Every third-party module the package imports is a declared dependency (not one that arrives through another)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project.get("optional-dependencies", {}).values() for r in extra]
    return {normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in reqs}


def imported_modules() -> dict[str, list[str]]:
    """Top-level module -> files importing it, for every absolute import under gpt4all/ (any depth, lazy ones too)."""
    out: dict[str, list[str]] = {}
    for path in sorted((ROOT / "gpt4all").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                out.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return out


def test_every_imported_third_party_module_is_declared():
    dists = packages_distributions()
    deps = declared()
    undeclared = {}
    for module, files in imported_modules().items():
        if module in sys.stdlib_module_names or module == "gpt4all":
            continue
        providers = {normalise(d) for d in dists.get(module, [])} or {normalise(module)}
        if not providers & deps:
            undeclared[module] = (sorted(providers), files[:3])
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
