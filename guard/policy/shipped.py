"""The policies shipped with guard (`text-harm`, ...), by name: in an installed wheel they are the
data folder guard/policies/, in a checkout the folder policies/ beside guard/."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # guard/


def shipped_dir() -> Path | None:
    """The folder of shipped policies: the wheel's guard/policies/, else a checkout's policies/."""
    for candidate in (_PACKAGE / "policies", _PACKAGE.parent / "policies"):
        if (candidate / "text-harm.yaml").is_file():
            return candidate
    return None


def shipped_names() -> list[str]:
    """The names `guard compile NAME` accepts without a file: the shipped YAML files' stems."""
    folder = shipped_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def is_bare_name(reference: str) -> bool:
    """A name, not a path: no folder, no YAML suffix."""
    return not ("/" in reference or "\\" in reference or reference.endswith((".yaml", ".yml")))


def shipped_policy(reference: str) -> Path | None:
    """The shipped policy file a bare name means, or None."""
    if not is_bare_name(reference):
        return None
    folder = shipped_dir()
    path = folder / f"{reference}.yaml" if folder else None
    return path if path is not None and path.is_file() else None
