#!/usr/bin/env bash
# Rewrite constraints.txt from .venv (after `GUARD_NEWEST=1 bash scripts/setup.sh` and a green
# `.venv/bin/python -m pytest`): the versions the tests passed with become the ones set-up installs.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  sed -n '1,/^[^#]/{/^#/p}' constraints.txt
  .venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e' | sed 's/+cpu$//'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
