"""guard 0.2's module paths keep importing for one release (guard/_moved.py): the same module object as
the new path, with a DeprecationWarning that names it. Run in fresh interpreters, since a module
imported once is not imported again."""

import subprocess
import sys

import pytest

from guard._moved import MOVED


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c", code], capture_output=True, text=True
    )


def test_every_old_path_names_a_module_that_exists():
    import importlib.util

    assert all(importlib.util.find_spec(new) is not None for new in MOVED.values())
    assert all(importlib.util.find_spec(old.rpartition(".")[0]) is not None for old in MOVED)


@pytest.mark.parametrize("old", ["guard.images", "guard.data", "guard.attacks"])
def test_an_old_path_is_the_new_module_with_a_warning(old):
    new = MOVED[old]
    result = run(f"import importlib, {old} as a, {new} as b; print(a is b, a.__name__, a.__spec__.name)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", new, new]
    assert f"{old} is now {new}" in result.stderr and "DeprecationWarning" in result.stderr


def test_old_from_imports_and_classes_are_the_same_objects():
    code = (
        "from guard.runtime import Verdict as Old; from guard.check.engine import Verdict as New; "
        "from guard import scanner; from guard.scanning import scanner as s; print(Old is New, scanner is s)"
    )
    result = run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
    assert result.stderr.count("DeprecationWarning") == 2


def test_unknown_names_are_still_errors():
    result = run("import guard.no_such_module")
    assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr
