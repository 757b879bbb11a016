"""guard: few-shot content-safety moderation with Sparse Attention Vectors (SAV)."""

from importlib.metadata import PackageNotFoundError, version

from guard import _moved
from guard.errors import GuardError, ModelError, PolicyError, StoreError
from guard.models.images import ImageError
from guard.policy import Policy, load_policy

_moved.install()  # guard 0.2's module paths (guard.runtime, guard.scanner, ...) still import, with a warning

try:
    __version__ = version("guard-sav")  # the distribution (pyproject.toml) is the one source of truth
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name):
    # The runtime and compiler import torch and transformers; load them only when asked for,
    # so `import guard` and policy validation stay fast.
    if name in ("Guard", "GuardSet", "Verdict", "HeadVote"):
        from guard.check import engine as runtime

        return getattr(runtime, name)
    if name == "OnnxGuard":  # an export on onnxruntime: OnnxGuard.load(DIR), OnnxGuard.from_guard(guard, DIR)
        from guard.onnx.engine import OnnxGuard

        return OnnxGuard
    if name == "scan":  # guard.scan(items, guards, ...): the streaming bulk scanner
        from guard.scanning.scanner import scan

        return scan
    if name == "compile_policy":
        from guard.compiler import compile_policy

        return compile_policy
    raise AttributeError(name)


__all__ = [
    "Guard",
    "GuardError",
    "GuardSet",
    "HeadVote",
    "ImageError",
    "ModelError",
    "OnnxGuard",
    "Policy",
    "PolicyError",
    "StoreError",
    "Verdict",
    "compile_policy",
    "load_policy",
    "scan",
]
