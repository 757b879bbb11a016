#!/usr/bin/env bash
# Run the benchmarks and print guard/reference ratios (figures for BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .benchmarks
.venv/bin/python -m pytest benchmarks --benchmark-enable --benchmark-json=.benchmarks/latest.json \
  --benchmark-columns=min,mean,max,rounds -p no:cacheprovider -q "$@"
.venv/bin/python -m benchmarks.report .benchmarks/latest.json
