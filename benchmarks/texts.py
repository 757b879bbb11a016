"""Inputs the benchmarks run on: the default policy's held-out texts."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "text-harm.yaml"


def heldout_texts() -> list[str]:
    path = ROOT / "policies" / "text-harm" / "heldout.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
