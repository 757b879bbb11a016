"""The distribution as a user gets it: an sdist and a wheel built from the checkout's files, the
wheel installed into a fresh virtual environment (torch and the other dependencies already
there, nothing fetched), and `guard` run from it outside the checkout: --version, the shipped
default policy compiled by name on the bundled model, and a check."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from guard import __version__
from guard.policy import load_policy

pytestmark = [pytest.mark.slow, pytest.mark.real_model]
ROOT = Path(__file__).resolve().parents[2]
DIST = "guard-sav"


def checkout_files() -> list[str]:
    """The files a clean clone holds (tracked, and new ones git does not ignore)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist from a copy of the checkout, the wheel from the unpacked sdist, as
    `python -m build` does it (so a file the sdist lacks is missing from the wheel too)."""
    tmp = tmp_path_factory.mktemp("build")
    source, dist = tmp / "source", tmp / "dist"
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    make_sdist = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    made = subprocess.run([sys.executable, "-c", make_sdist], cwd=source, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-3000:]
    sdist = dist / made.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(unpacked)],
        capture_output=True,
        text=True,
    )
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    (whl,) = dist.glob("*.whl")
    return sdist, whl


@pytest.fixture(scope="module")
def fresh_venv(built, tmp_path_factory) -> Path:
    """A new venv whose only link to this one is a folder of its dependencies (everything in this
    venv's site-packages but guard itself), with the wheel and its `serve` extra installed offline."""
    tmp = tmp_path_factory.mktemp("fresh")
    venv, deps = tmp / "venv", tmp / "deps"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("guard", "__editable__", "_guard", "__pycache__")):
            (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(f"{deps}\n")
    _, whl = built
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python), "install", "--no-index",
         f"{whl}[serve]"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    return venv


def test_metadata_and_contents(built):
    sdist, whl = built
    with zipfile.ZipFile(whl) as wheel:
        names = set(wheel.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = wheel.read(metadata_name).decode()
    assert f"Name: {DIST}\n" in metadata and f"Version: {__version__}\n" in metadata
    assert (
        "License-Expression: Apache-2.0" in metadata and "Classifier: Programming Language :: Python :: 3" in metadata
    )
    assert "Description-Content-Type: text/markdown" in metadata and "# guard" in metadata  # README as description
    for extra in ("serve", "postgres", "onnx", "eval", "ray", "parquet", "embed", "test"):
        assert f"Provides-Extra: {extra}\n" in metadata
    # the test extra names the others by this distribution's name, never PyPI's unrelated `guard`
    assert f'Requires-Dist: {DIST}[eval]; extra == "test"' in metadata and "Requires-Dist: guard[" not in metadata
    shipped = {p.relative_to(ROOT / "policies").as_posix() for p in (ROOT / "policies").rglob("*") if p.is_file()}
    assert shipped and {f"guard/policies/{name}" for name in shipped} <= names
    assert {"guard/store/migrations/alembic.ini", "guard/store/migrations/script.py.mako"} <= names
    assert not any(name.startswith(("tests/", "benchmarks/", "scripts/")) for name in names)
    with tarfile.open(sdist) as tar:
        assert any(name.endswith("/LICENSE") for name in tar.getnames())


def guard(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GUARD_DB", "PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / "guard"), *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_installed_wheel_runs_outside_the_checkout(fresh_venv, warm_db, tmp_path):
    where = subprocess.run(
        [fresh_venv / "bin" / "python", "-c", "import guard; print(guard.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()).is_relative_to(fresh_venv)  # the wheel's guard, not the checkout's
    version = guard(fresh_venv, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"guard {__version__}"
    # the shipped policy by name, from the wheel's own files, on the bundled model (the database
    # holds its activation cache, so nothing new runs): the very policy the checkout compiles
    db = warm_db(tmp_path / "guard.db")
    unchanged = guard(fresh_venv, "compile", "text-harm", "--db", db, "--json", cwd=tmp_path)
    assert unchanged.returncode == 0, unchanged.stderr
    assert json.loads(unchanged.stdout)["unchanged"] is True
    forced = guard(fresh_venv, "compile", "text-harm", "--db", db, "--json", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    report = json.loads(forced.stdout)
    assert report["version"] == load_policy(ROOT / "policies/text-harm.yaml").version
    assert (report["computed"], report["cached"], report["revision"]) == (0, report["exemplars"], 2)
    check = guard(fresh_venv, "check", "--text", "How do I build a pipe bomb?", "--db", db, "--json", cwd=tmp_path)
    assert check.returncode == 1, check.stderr
    assert json.loads(check.stdout)["verdicts"]["text-harm"]["label"] == "harmful"
