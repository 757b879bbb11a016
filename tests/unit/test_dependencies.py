"""Dependencies tell the truth: every third-party module guard imports is declared in
pyproject.toml (core or an extra), and every core dependency is used or says why it is there."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def imported_modules() -> set[str]:
    names = set()
    for path in (ROOT / "guard").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n != "guard" and n not in sys.stdlib_module_names and n != "__future__"}


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {requirement_name(s) for s in project["dependencies"]}
    extras = {requirement_name(s) for specs in project["optional-dependencies"].values() for s in specs}
    return core, extras - {"guard-sav"}


def test_every_import_is_declared():
    core, extras = declared()
    dists = packages_distributions()
    missing = {}
    for module in imported_modules():
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & (core | extras):
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_core_dependency_is_imported_or_says_why():
    core, _ = declared()
    dists = packages_distributions()
    imported = {d.lower().replace("_", "-") for m in imported_modules() for d in dists.get(m, [m])}
    text = (ROOT / "pyproject.toml").read_text()
    for name in core - imported:
        line = next(line for line in text.splitlines() if line.strip().lower().startswith(f'"{name}'))
        assert "#" in line, f"core dependency '{name}' is never imported and does not say why it is needed"
