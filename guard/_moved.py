"""Old import paths of guard 0.2 (`guard.runtime`, `guard.scanner`, ...): they keep working for one
release, with a DeprecationWarning that names the new path.

A finder on sys.meta_path answers for the old names only, with the new module itself, so there is
one module object (classes compare equal, pickles made under the old path load)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "guard.artifact": "guard.method.artifact",
    "guard.attacks": "guard.eval.attacks",
    "guard.audit": "guard.store.audit",
    "guard.baselines": "guard.eval.baselines",
    "guard.calibration": "guard.method.calibration",
    "guard.capture": "guard.models.capture",
    "guard.data": "guard.policy.exemplars",
    "guard.eval_sources": "guard.eval.sources",
    "guard.evaluate": "guard.eval.evaluate",
    "guard.explain": "guard.check.explain",
    "guard.export": "guard.onnx.export",
    "guard.features": "guard.models.features",
    "guard.images": "guard.models.images",
    "guard.metrics": "guard.eval.metrics",
    "guard.migrations": "guard.store.migrations",
    "guard.onnx_engine": "guard.onnx.engine",
    "guard.plots": "guard.eval.plots",
    "guard.runtime": "guard.check.engine",
    "guard.sav": "guard.method.sav",
    "guard.scan_input": "guard.scanning.readers",
    "guard.scan_output": "guard.scanning.writers",
    "guard.scan_ray": "guard.scanning.ray_data",
    "guard.scanner": "guard.scanning.scanner",
}
REMOVED_IN = "0.4"


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.own_spec  # the import system set the old name's spec on it


class MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(
            f"{fullname} is now {new}; the old path goes in guard {REMOVED_IN}", DeprecationWarning, stacklevel=2
        )
        return importlib.util.spec_from_loader(fullname, _MovedLoader(new))


def install() -> None:
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
