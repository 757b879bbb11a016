"""Which engine a command runs: `--engine torch|onnx` and `--onnx DIR`, checked the same way by
`guard check`, `guard scan` and `guard serve`. Imports nothing heavy, so a command refuses a bad
choice before torch loads."""

from __future__ import annotations

from guard.errors import GuardError

ENGINES = ("torch", "onnx")


def wants_onnx(engine: str | None, onnx_dir: str | None) -> bool:
    """Whether a command runs an ONNX export: `--engine onnx --onnx DIR`, or `--onnx DIR` alone;
    a GuardError for an unknown engine or a folder without the engine that reads it."""
    if engine not in (None, *ENGINES):
        raise GuardError(f"--engine is torch or onnx, not '{engine}'")
    if engine == "onnx" and onnx_dir is None:
        raise GuardError("--engine onnx needs --onnx DIR (a folder written by 'guard export NAME --onnx DIR')")
    if engine == "torch" and onnx_dir is not None:
        raise GuardError("--onnx DIR goes with --engine onnx")
    return onnx_dir is not None
