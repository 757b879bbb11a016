"""`guard eval`'s tables for people: an evaluation on a test file (methods side by side, SAV's
confusion matrix and calibration, the sweeps, depths and attacks) and one source by source (rates
per group with Wilson intervals). Printing only: the numbers come from guard.eval.evaluate and
guard.eval.sources."""

from __future__ import annotations

from guard.eval.evaluate import METHOD_TITLES, Evaluation, SweepPoint
from guard.eval.sources import METHOD_NAMES, Breakdown, SourceEvaluation


def print_evaluation(ev: Evaluation, console=None) -> None:
    """Rich tables: methods side by side, SAV's confusion matrix, the sweeps."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    _print_header(ev, console)
    table = Table(
        "method", "accuracy", "macro-F1", *[f"{n} P / R / F1" for n in ev.labels], *[f"FPR {n}" for n in ev.flagged]
    )
    for m in ev.methods.values():
        r = m.report
        per = [
            f"{r.per_label[n].precision:.2f} / {r.per_label[n].recall:.2f} / {r.per_label[n].f1:.2f}" for n in ev.labels
        ]
        table.add_row(
            m.title, f"{r.accuracy:.1%}", f"{r.macro_f1:.3f}", *per, *[f"{r.per_label[n].fpr:.1%}" for n in ev.flagged]
        )
    console.print(table)
    sav_report = ev.methods["sav"].report
    confusion = Table("SAV: true \\ predicted", *ev.labels)
    for name, row in zip(ev.labels, sav_report.confusion):
        confusion.add_row(name, *[str(v) for v in row])
    console.print(confusion)
    for name, bins in ev.methods["sav"].extra.get("reliability", {}).items():
        rel = Table(
            "calibrated score",
            "items",
            "mean score",
            f"observed {name}",
            title=f"SAV calibration on the test items: P({name})",
        )
        for b in bins:
            if b["items"]:
                rel.add_row(
                    f"{b['low']:.1f} - {b['high']:.1f}",
                    str(b["items"]),
                    f"{b['mean_score']:.2f}",
                    f"{b['observed']:.2f}",
                )
        console.print(rel)
    for kind in ("shots", "heads"):
        points = [p for p in ev.sweeps if p.sweep == kind]
        if points:
            console.print(_sweep_table(kind, points))
    if ev.breakdown:
        console.print(breakdown_table(ev.breakdown))
    _print_depths(ev, console)
    _print_attacks(ev, console)
    for note in ev.notes:
        console.print(f"note: {note}")


def _print_header(ev: Evaluation, console) -> None:
    """What was evaluated, on what, and what the exemplars' own fit says."""
    console.print(
        f"[bold]{ev.policy}[/] (version {ev.version}) on {ev.model}: {ev.evaluated} test items from {ev.test_file}, "
        f"{ev.exemplars} exemplars, k = {ev.heads} heads; {ev.forwards} model forwards, "
        f"head outputs of {ev.cached} inputs from the cache"
    )
    fit = ev.fit_metrics
    if "loo_vote_accuracy" in fit:
        console.print(
            f"on the exemplars: leave-one-out vote accuracy {fit['loo_vote_accuracy']:.1%} "
            f"(heads re-selected without each item; what calibration rests on)"
        )
    if ev.excluded:
        console.print(
            f"excluded {len(ev.excluded)} test item(s) that are also exemplars: "
            + ", ".join(e.origin for e in ev.excluded[:5])
            + (" ..." if len(ev.excluded) > 5 else "")
        )


def _sweep_table(kind: str, points: list[SweepPoint]):
    """Accuracy against shots or heads, one column per method (mean ± std over draws)."""
    from rich.table import Table

    methods = list(dict.fromkeys(p.method for p in points))
    sweep = Table(
        f"{kind} {'per label' if kind == 'shots' else '(k)'}",
        *[METHOD_TITLES[m] for m in methods],
        title=f"accuracy vs {kind}" + (" (mean ± std over draws)" if kind == "shots" else ""),
    )
    for value in sorted({p.value for p in points}):
        cells = []
        for method in methods:
            p = next((p for p in points if p.value == value and p.method == method), None)
            cells.append(
                ""
                if p is None
                else f"{p.mean:.1%}" + (f" ± {p.std:.1%} ({len(p.accuracies)})" if len(p.accuracies) > 1 else "")
            )
        sweep.add_row(str(value), *cells)
    return sweep


def _print_depths(ev: Evaluation, console) -> None:
    from rich.table import Table

    if not ev.depths:
        return
    table = Table(
        "max_layer",
        "deepest head",
        "accuracy",
        *[f"recall {n}" for n in ev.flagged],
        *[f"FPR {n}" for n in ev.flagged],
        "check s/input",
        title="SAV accuracy vs depth (heads no deeper than max_layer; time of a forward that stops there)",
    )
    for d in ev.depths:
        table.add_row(
            str(d.max_layer),
            str(d.deepest),
            f"{d.accuracy:.1%}",
            *[f"{d.recall[n]:.1%}" for n in ev.flagged],
            *[f"{d.fpr[n]:.1%}" for n in ev.flagged],
            "" if d.seconds_per_input is None else f"{d.seconds_per_input * 1000:.1f} ms",
        )
    console.print(table)


def _print_attacks(ev: Evaluation, console) -> None:
    from rich.table import Table

    if not ev.attacks:
        return
    table = Table("attack", "what it adds", "flagged", "flipped to allowed", title="injection attacks on flagged items")
    for a in ev.attacks:
        table.add_row(a.name, a.description, str(a.flagged), f"{a.flipped} ({a.rate:.1%})")
    console.print(table)
    console.print(f"all attacks: {ev.attack_flip_rate:.1%} of attacked flagged verdicts flipped")


def _cell(value: dict | None) -> str:
    if value is None:
        return "-"
    return f"{value['k']}/{value['n']} {value['value']:.1%} [{100 * value['low']:.0f}-{100 * value['high']:.0f}]"


def breakdown_table(breakdown: Breakdown):
    """One row per group (and the pooled row): n, then recall, FPR and accuracy of each method,
    with 95% Wilson intervals."""
    from rich.table import Table

    title = (
        f"by {breakdown.group_by}, each group held out of its own fit (leave-one-source-out)"
        if breakdown.split == "loso"
        else f"by {breakdown.group_by} (fitted on all exemplars)"
    )
    columns = [f"{METHOD_NAMES[m]} {what}" for m in breakdown.methods for what in ("recall", "FPR", "accuracy")]
    table = Table(breakdown.group_by, "n", *columns, title=title + "; 95% Wilson intervals")
    rows = list(breakdown.rows.items()) + [("pooled", breakdown.pooled)]
    for group, row in rows:
        first = next(iter(row.values()))
        cells = []
        for m in breakdown.methods:
            d = row[m].to_dict()
            cells += [_cell(d["recall"]), _cell(d["fpr"]), _cell(d["accuracy"])]
        table.add_row(f"[bold]{group}[/]" if group == "pooled" else group, str(first.n), *cells)
    return table


def print_source_evaluation(ev: SourceEvaluation, console=None) -> None:
    from rich.console import Console

    console = console or Console()
    console.print(
        f"[bold]{ev.policy}[/] (version {ev.version}) on {ev.model}: {ev.exemplars} exemplars, "
        f"{len(ev.breakdown.rows)} groups held out in turn; {ev.forwards} model forwards, "
        f"head outputs of {ev.cached} inputs from the cache"
    )
    console.print(breakdown_table(ev.breakdown))
    for group, why in ev.breakdown.skipped.items():
        console.print(f"not held out: {group}: {why}")
    console.print(f"{len(ev.errors)} misjudged by SAV")
    for note in ev.notes:
        console.print(f"note: {note}")
