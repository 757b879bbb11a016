"""Printing for people and for programs: a verdict's line, its explanation, a checked input's
JSON record, a line's error, a compiled policy's headline, rich tables."""

from __future__ import annotations

import json
import sys

import typer


def echo_json(value) -> None:
    typer.echo(json.dumps(value))


def warn(message: str) -> None:
    """A note on stderr that does not stop the command."""
    typer.echo(f"guard: {message}", err=True)


# Piped or redirected output is read by programs and pagers, not a screen: rows are never cut
# (rich would otherwise assume 80 columns, or COLUMNS).
UNCUT_WIDTH = 100_000


def console(**kwargs):
    """A rich Console for tables: on a terminal, the terminal's width (tables shrink their columns
    and wrap cells to fit); piped or redirected, wide enough that every row stays whole."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else UNCUT_WIDTH
    return Console(width=width, **kwargs)


def print_table(table, out=None) -> None:
    """A table on `out` (default: `console()`), each cell wrapped (folded inside long words) rather
    than cut short when the terminal is too narrow for it."""
    for column in table.columns:
        column.overflow = "fold"
    (out or console()).print(table, markup=False)


def headline(summary) -> str:
    """A compiled policy's accuracy, with the words that say how it was measured."""
    from guard.method.artifact import headline_words

    acc = summary.headline_accuracy
    if acc is None:
        return "cross-fitted accuracy: not computed (too few exemplars per label)"
    return f"{acc:.1%} {headline_words(summary.metrics)}"


def print_verdict(text: str, verdict, show_policy: bool = False) -> None:
    """One line: the verdict, then what decided it (guard.method.calibration.decide): each flagged label's
    calibrated probability against its threshold, else (no calibration) the heads' votes."""
    mark = "FLAGGED" if verdict.flagged else "allowed"
    short = text if len(text) <= 70 else text[:67] + "..."
    where = f"{verdict.policy}: " if show_policy else ""
    heads = len(verdict.votes) or 1
    votes = ", ".join(f"{name} {round(share * heads)}/{heads}" for name, share in verdict.scores.items())
    if verdict.calibrated and verdict.thresholds:
        rule = " ".join(
            f"P({name})={verdict.calibrated[name]:.2f}{'>=' if verdict.calibrated[name] >= t else '<'}{t:.2f}"
            for name, t in verdict.thresholds.items()
        )
        why = f"{rule} [votes {votes}]"
    else:
        why = f"[votes {votes}]"
    unsure = " uncertain" if verdict.uncertain else ""
    typer.echo(
        f"{mark:8} {where}{verdict.label:12} {why}{unsure}{window_words(verdict.window)}{turn_words(verdict)}  {short}"
    )


def window_words(window: dict | None) -> str:
    """A windowed policy's verdict decided by a window (a run of sentences, guard.check.windows)
    names it: ` window 2/3 "its text"` (the second of three windows); nothing for the whole text or a policy without windows."""
    if not window or not window["index"]:
        return ""
    text = window["text"] if len(window["text"]) <= 50 else window["text"][:47] + "..."
    if window.get("document"):  # a document's windows alone were checked (guard.check.documents)
        where = f"{window['index']}/{window['of']} chars {window['start']}-{window['end']}"
    else:
        where = f"{window['index']}/{window['of'] - 1}"
    return f" window {where} {json.dumps(text, ensure_ascii=False)}"


def print_window(window: dict | None) -> None:
    """`--explain`: the window that decided a verdict, its span and (up to 300 characters) its text."""
    if not window or not window["index"]:
        return
    text = window["text"] if len(window["text"]) <= 300 else window["text"][:297] + "..."
    typer.echo(f"  window {window['index']}, characters {window['start']:,}-{window['end']:,}: {text}")


def turn_words(verdict) -> str:
    """A conversation's verdict names the turn it judged: ` turn 3 (user)`; an `every_turn`
    policy's also says how many of its turns were flagged: ` turn 3 (user), 1/4 turns flagged`."""
    if verdict.turn is None:
        return ""
    words = f" turn {verdict.turn['index']} ({verdict.turn['role']})"
    if verdict.turns is not None:
        words += f", {sum(v.flagged for v in verdict.turns)}/{len(verdict.turns)} turns flagged"
    return words


def print_explanation(why: dict) -> None:
    typer.echo(f"  {'rank':>4} {'layer':>5} {'head':>4}  {'vote':12} {'similarity':>10} {'margin':>8}")
    for v in why["votes"]:
        typer.echo(
            f"  {v['rank']:>4} {v['layer']:>5} {v['head']:>4}  {v['label']:12} {v['similarity']:>10.4f} {v['margin']:>+8.4f}"
        )
    for h in why["nearest_exemplars"]:
        typer.echo(
            f"  closest exemplars at layer {h['layer']} head {h['head']} (rank {h['rank']}, voted {h['voted']}):"
        )
        for e in h["exemplars"]:
            text = e["text"] if len(e["text"]) <= 80 else e["text"][:77] + "..."
            typer.echo(f"    {e['similarity']:.3f}  {e['label']:12} {text}")


def show_result(origin: dict, name: str, result, as_json: bool, explain: bool) -> None:
    """A checked input: one JSON record ({**origin, **result}), or a line per policy's verdict."""
    if as_json:
        echo_json({**origin, **result.to_dict()})
        return
    for verdict in result.values():
        print_verdict(name, verdict, show_policy=len(result) > 1)
        if explain:
            print_window(verdict.window)
            print_explanation(verdict.explanation)


def show_line_error(line: int, reason: str, as_json: bool) -> None:
    """A stdin line that cannot be checked: its error record."""
    typer.echo(json.dumps({"line": line, "error": reason}) if as_json else f"{'error':8} line {line}: {reason}")


def flush() -> None:
    sys.stdout.flush()
