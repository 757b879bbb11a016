"""Where a policy may read files from: its folder, its data root, and folders the user allows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DATA_ROOT_ENV = "GUARD_DATA_ROOT"
ALLOW_PATHS_ENV = "GUARD_ALLOW_PATHS"  # os.pathsep-separated folders exemplar files may also come from


def allowed_roots(base_dir: Path, data_root: Path, extra: Sequence[str | Path] = ()) -> list[Path]:
    """The folders a policy's exemplar files may come from: its own folder, its data root, and
    what the user allows explicitly (`--allow-path DIR`, or GUARD_ALLOW_PATHS)."""
    env = [p for p in os.environ.get(ALLOW_PATHS_ENV, "").split(os.pathsep) if p.strip()]
    return [Path(p).expanduser().resolve() for p in (base_dir, data_root, *extra, *env)]


def confined(root: Path, rel: str, roots: Sequence[Path], fail) -> Path:
    """`root / rel`, if it (symlinks followed) stays inside one of `roots`; else `fail(why)`.

    A policy names files relative to its data root; an absolute path or a `..` that leads out of
    the allowed folders would let a policy read any file the user can (README, "Paths")."""
    path = Path(root) / Path(rel).expanduser()
    if not is_inside(path, roots):
        fail(
            f"'{rel}' is outside the policy's folder and data root; allow its folder explicitly with "
            f"--allow-path DIR (or {ALLOW_PATHS_ENV})"
        )
    return path


def is_inside(path: str | Path, roots: Sequence[Path]) -> bool:
    """Whether `path`, symlinks followed, is one of `roots` (resolved folders) or inside one:
    an absolute path or a `..` that leads out is not, nor a symlink that points out."""
    real = Path(path).resolve()
    return any(real == r or r in real.parents for r in roots)
