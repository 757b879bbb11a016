"""Cost of a long document against its length (issue 23): windows per second and peak memory at
1x, 10x and 100x a document's length, checked window by window (guard.check.documents), against
the baseline of checking the same windows all at once (`check_batch` over every window text),
measured in the same run, each size in a fresh process.

    python -m benchmarks.documents --db guard.db [--base-chars 500] [--scales 1,10,100]

Memory is the peak resident set on top of the loaded, warmed model (benchmarks.memory: VmHWM
reset after loading). The document at scale N is N base documents of ordinary prose
(tests/support/documents.py), each starting one paragraph further into the prose: the same kind
of text, N times as long, its windows distinct (identical inputs would run once, in
guard.models.features and in the WindowCache, which is off here), so any growth of memory or of
time per window comes from the length alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks.memory import run_fresh, status_kb


def measure(db: str, chars: tuple[int, int], how: str) -> dict:
    """In this process: load, warm up, reset the peak, check one document: `chars` (base
    characters, copies)."""
    from guard.check.documents import DOCUMENT_WINDOW, WindowCache, check_document, document_spans
    from guard.check.engine import GuardSet
    from tests.support.documents import filler

    guards = GuardSet.load(db, device="cpu")
    base, copies = chars
    text = "\n\n".join(filler(base, start=i) for i in range(copies))
    guards.check_batch([text[:300]])  # warm-up: weights paged in, kernels ready
    windows = sum(1 for _ in document_spans(text, DOCUMENT_WINDOW))
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    base = status_kb("VmRSS")
    started = time.perf_counter()
    if how == "windows":
        check_document(guards, {"text": text}, seen=WindowCache(0))
    else:  # every window at once: what memory would hold without streaming
        guards.check_batch([text[a:b] for a, b in document_spans(text, DOCUMENT_WINDOW)])
    seconds = time.perf_counter() - started
    peak = status_kb("VmHWM") - base
    return {"chars": len(text), "windows": windows, "seconds": seconds, "peak_mib": peak / 1024, "how": how}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("GUARD_DB", "guard.db"))
    parser.add_argument("--base-chars", type=int, default=500)
    parser.add_argument("--scales", default="1,10,100")
    parser.add_argument("--one", nargs=3, metavar=("BASE", "COPIES", "HOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.db, (int(args.one[0]), int(args.one[1])), args.one[2])))
        return
    rows = []
    for scale in [int(s) for s in args.scales.split(",")]:
        for how in ("windows", "all-at-once"):
            row = run_fresh("benchmarks.documents", "--db", args.db, "--one", args.base_chars, scale, how)
            row["scale"] = scale
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print("| length | characters | windows | how | windows/s | peak MiB over the loaded model |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['scale']}x | {row['chars']:,} | {row['windows']:,} | {row['how']} | "
            f"{row['windows'] / row['seconds']:.1f} | {row['peak_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
