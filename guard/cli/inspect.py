"""`guard list`, `guard rollback` and `guard inspect`: what the database holds, read back."""

from __future__ import annotations

import functools
from typing import Annotated

import typer

from guard.cli import options
from guard.cli.output import console, echo_json, headline, print_table
from guard.cli.root import command

# What the calibration reads per label, by vote rule (guard.method.sav.label_values), in inspect's formula.
VALUE_WORDS = {
    "count": "the label's share of the heads' votes",
    "margin": "the heads' mean similarity to the label minus the best other label's",
}
Versions = Annotated[
    bool, typer.Option("--versions", help="Every stored version of each policy, not only the current one")
]

PlotSize = options.plot_size("1400x600")


@command("list")
def list_command(
    db: options.Db = None,
    as_json: options.Json = False,
    versions: Versions = False,
    name: Annotated[str | None, typer.Argument(help="Only this policy (with --versions)")] = None,
):
    """List the compiled policies in the database (read without their vectors); --versions: with their earlier versions."""
    from guard.store.database import Store

    store = Store.open(db)
    if versions or name:
        rows = store.versions(name)
        echo_json(rows) if as_json else print_versions(rows)
        return
    summaries = store.summaries()
    echo_json([s.to_dict() for s in summaries]) if as_json else print_summaries(summaries)


def print_summaries(summaries) -> None:
    from rich.table import Table

    from guard.method.artifact import ESTIMATORS, HEADLINE, estimator

    table = Table("policy", "version", "labels (flagged*)", "model", "heads", "accuracy", "compiled")
    for s in summaries:
        labels = ", ".join(name + ("*" if name in s.flagged else "") for name in s.labels)
        acc = "-" if s.headline_accuracy is None else f"{s.headline_accuracy:.1%}"
        table.add_row(s.policy, s.version, labels, s.model, str(s.heads), f"{acc} ({estimator(s.metrics)})", s.compiled)
    out = console()
    print_table(table, out)
    words = HEADLINE.format(estimator=" or ".join(ESTIMATORS.values()))
    out.print("accuracy: " + words, markup=False)


def print_versions(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table("policy", "rev", "version", "current", "compiled", "dtype", "device")
    for r in rows:
        current = "*" if r["current"] else ""
        table.add_row(
            r["policy"], str(r["revision"]), r["version"], current, r["compiled"], r["dtype"] or "?", r["device"] or "?"
        )
    print_table(table)


@command("rollback")
def rollback_command(
    name: Annotated[str, typer.Argument(help="Policy name")],
    version: Annotated[str, typer.Argument(help="Revision number or content version (see 'guard list --versions')")],
    db: options.Db = None,
    as_json: options.Json = False,
):
    """Make an earlier compiled version of a policy the one that 'guard check' uses."""
    from guard.store.database import Store

    row = Store.open(db).rollback(name, version)
    if as_json:
        echo_json(row)
    else:
        typer.echo(f"'{name}' now checks with revision {row['revision']} (version {row['version']}, {row['compiled']})")


@command("inspect")
def inspect_command(
    name: Annotated[str | None, typer.Argument(help="Policy name (optional if the database holds one)")] = None,
    db: options.Db = None,
    as_json: options.Json = False,
    plot: Annotated[
        str | None, typer.Option("--plot", help="Write a PNG: head accuracy map and exemplars at the best head")
    ] = None,
    size: PlotSize = None,
):
    """Show a compiled policy's selected heads, metrics and calibration; optionally plot them."""
    from guard.store.database import Store

    art = Store.open(db).load_artifacts(None if name is None else [name])[0]
    if plot:
        from guard.eval.plots import POLICY_SIZE, need_plotting, parse_size, policy_figure

        need_plotting()
        policy_figure(art, plot, parse_size(size, POLICY_SIZE))
        typer.echo(f"wrote {plot}", err=as_json)
    echo_json(art.to_dict()) if as_json else print_artifact(art)


def print_artifact(art) -> None:
    from rich.table import Table

    view = art.to_dict()
    screen = console(highlight=False)
    out = functools.partial(screen.print, markup=False)
    out(f"{art.name} version {art.version}  model {art.model_reference}  scoring {art.scoring}")
    out(f"  {headline(art.summary())}")
    for key, value in art.metrics.items():
        out(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    table = Table("rank", "layer", "head", f"accuracy ({art.scoring})", "mean margin")
    for h in view["selected_heads"]:
        table.add_row(str(h["rank"]), str(h["layer"]), str(h["head"]), f"{h['accuracy']:.3f}", f"{h['margin']:.4f}")
    print_table(table, screen)
    if view["calibration"] is None:
        out("calibration: none (compiled before calibration, or too few exemplars per label)")
        return
    for line in calibration_lines(art, view["calibration"]):
        out(line)


def calibration_lines(art, cal: dict) -> list[str]:
    """inspect's calibration section: the map per label, its threshold, the uncertainty rule."""
    from guard.method.calibration import VOTE_BOUNDARY

    lines = [f"calibration: {cal['method']}; x = {VALUE_WORDS[art.vote]}"]
    flagged = set(art.flagged_labels)
    for index, (label, c) in enumerate(cal["labels"].items()):
        line = f"  {label}: p = sigmoid({c['slope']:.3f} * x {c['intercept']:+.3f})"
        t = c["threshold"]
        if t:
            line += (
                f"; flagged at p >= {t['value']:.3f} for {t['metric']} {t['target']:g} "
                f"(cross-fitted: recall {t['recall']:.1%}, FPR {t['fpr']:.1%})"
            )
        elif label in flagged and (at := art.calibration.threshold(index, art.vote)) is not None:
            line += f"; flagged at p >= {at:.3f} (x >= {VOTE_BOUNDARY[art.vote]:g}: the vote's boundary)"
        lines.append(line)
    margin = cal["uncertain_margin"]
    lines.append(
        "uncertain: P(verdict's label) < 0.50"
        + (f", or a vote margin (most votes - next, as a share of heads) below {margin:.2f}" if margin else "")
    )
    return lines
