"""Cost of a long document against its length (issue 23): windows per second and peak memory at
1x, 10x and 100x a document's length, checked window by window (guard.check.documents), each
size in a fresh process; the 1x row is the baseline the ratios are taken against.

    python -m benchmarks.documents --db guard.db [--base-chars 20000] [--scales 1,10,100]
        [--text repeated|distinct] [--shape paragraphs|one-paragraph] [--tiny]

Memory is the peak resident set on top of the loaded, warmed model *and the document itself*
(benchmarks.memory: VmHWM reset once the text is built), so the input, the one thing a check of
it needs in proportion to its length, is already counted out; its size is printed beside it.

`--text repeated` (the default) is the 1x document N times over, the library's window cache on
(as `guard.check` runs): the model checks the 1x document's windows once and every other window
is a cache hit, so the time and memory left are what the document code does with the length
(splitting, window texts, folding verdicts), not the model's forwards. `--text distinct` is the
earlier study's: N base documents each starting one paragraph further into the prose, cache off,
so every window is a forward, against the baseline of checking the same windows all at once
(`check_batch` over every window's text). `--shape one-paragraph` joins the document without a
blank line, with typographic apostrophes and a final newline, as a word processor saves a text
file (a paragraph is the whole document, not ASCII: what a copy of it costs shows there).
`--tiny` checks with the tests' tiny random model (tests/support/fixtures.py) instead of `--db`,
fast enough for long texts. The document is ordinary prose (tests/support/documents.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.memory import run_fresh, status_kb


def tiny_db() -> str:
    """A database with the tests' tiny policy on the tiny random llama (made once per machine)."""
    from guard.compiler import compile_policy
    from tests.support.fixtures import TEXTS, make_text_model, write_policy

    folder = Path(tempfile.gettempdir()) / "guard-bench-tiny"
    db = folder / "guard.db"
    if not db.exists():
        folder.mkdir(exist_ok=True)
        model = make_text_model(folder / "model")
        compile_policy(write_policy(folder, model, TEXTS), str(db))
    return str(db)


def document(base: int, copies: int, text: str, shape: str) -> str:
    from tests.support.documents import filler

    if text == "repeated":
        parts = [filler(base)] * copies
    else:
        parts = [filler(base, start=i) for i in range(copies)]
    joined = "\n\n".join(parts)
    if shape == "one-paragraph":  # as a word processor saves it: typographic apostrophes, a final newline
        return joined.replace("\n\n", " ").replace("'", "\u2019") + "\n"
    return joined


def measure(db: str, base: int, copies: int, text: str, shape: str, how: str) -> dict:
    """In this process: load, warm up, build the document, reset the peak, check it."""
    from guard.check.documents import DOCUMENT_WINDOW, WindowCache, check_document, document_spans
    from guard.check.engine import GuardSet

    guards = GuardSet.load(db, device="cpu")
    doc = document(base, copies, text, shape)
    guards.check_batch([doc[:300]])  # warm-up: weights paged in, kernels ready
    windows = sum(1 for _ in document_spans(doc, DOCUMENT_WINDOW))
    # the longest window's tokens: what sizes the largest forward's attention (rows x length^2)
    longest = max(guards.text_tokens(doc[a:b]) for a, b in document_spans(doc, DOCUMENT_WINDOW))
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    rss = status_kb("VmRSS")
    started = time.perf_counter()
    if how == "windows":
        check_document(guards, {"text": doc}, seen=WindowCache() if text == "repeated" else WindowCache(0))
    else:  # every window at once: what memory would hold without streaming
        guards.check_batch([doc[a:b] for a, b in document_spans(doc, DOCUMENT_WINDOW)])
    seconds = time.perf_counter() - started
    peak = status_kb("VmHWM") - rss
    return {
        "chars": len(doc),
        "input_mib": sys.getsizeof(doc) / 2**20,
        "windows": windows,
        "longest_tokens": longest,
        "seconds": seconds,
        "peak_mib": peak / 1024,
        "how": how,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("GUARD_DB", "guard.db"))
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random model, not --db")
    parser.add_argument("--base-chars", type=int, default=20_000)
    parser.add_argument("--scales", default="1,10,100")
    parser.add_argument("--text", choices=("repeated", "distinct"), default="repeated")
    parser.add_argument("--shape", choices=("paragraphs", "one-paragraph"), default="paragraphs")
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        db, base, copies, text, shape, how = args.one
        print(json.dumps(measure(db, int(base), int(copies), text, shape, how)))
        return
    db = tiny_db() if args.tiny else args.db
    scales = [int(s) for s in args.scales.split(",")]
    # a long repeated document may pass the library's default limit: this run's documents are allowed
    os.environ["GUARD_MAX_DOCUMENT_CHARS"] = str(max(4_000_000, 2 * args.base_chars * max(scales)))
    rows = []
    for scale in scales:
        for how in ("windows",) if args.text == "repeated" else ("windows", "all-at-once"):
            row = run_fresh("benchmarks.documents", "--one", db, args.base_chars, scale, args.text, args.shape, how)
            row["scale"] = scale
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    first = {row["how"]: row for row in rows if row["scale"] == scales[0]}
    print(
        "| length | characters | input MiB | windows | longest window (tokens) | how | windows/s "
        "| peak MiB over model and input | peak / 1x |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ratio = row["peak_mib"] / first[row["how"]]["peak_mib"] if first[row["how"]]["peak_mib"] else float("nan")
        print(
            f"| {row['scale']}x | {row['chars']:,} | {row['input_mib']:.2f} | {row['windows']:,} | "
            f"{row['longest_tokens']} | {row['how']} | "
            f"{row['windows'] / row['seconds']:.1f} | {row['peak_mib']:.1f} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
