"""`guard review export|diff` and `guard promote`: reviewers' corrections become a candidate version,
measured against the current one, then served."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from guard.cli import options
from guard.cli.output import echo_json
from guard.cli.root import app, command, friendly, quiet_transformers

review_app = typer.Typer(
    help="The review loop: export reviewed items as exemplars, compare a candidate version.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(review_app, name="review")

Name = Annotated[str, typer.Argument(help="Policy name")]
HoldOut = Annotated[
    float,
    typer.Option(
        "--hold-out", min=0, max=1, help="Share of reviewed items kept out of the export, for 'guard review diff'"
    ),
]


@review_app.command("export")
@friendly
def export_command(
    name: Name,
    db: options.Db = None,
    hold_out: HoldOut = 0.2,
    weight: Annotated[
        float,
        typer.Option("--weight", min=0.01, max=1000, help="How many times the fit counts each reviewed item"),
    ] = 10.0,
):
    """Reviewed items of a policy as exemplar JSON lines on stdout, for a policy's `from:`; the
    latest admin decision wins, else the reviewers' majority; ties are reported on stderr."""
    from guard.store.database import Store
    from guard.store.reviews import Reviews, decide, export

    store = Store.open(db)
    store.versions(name)  # an unknown policy: one line, exit 2
    reviews = Reviews(store)
    done = export(decide(reviews.all(name)), hold_out, weight)
    for line in done.lines:
        echo_json(line)
    for tie in done.ties:
        votes = ", ".join(f"{label} {n}" for label, n in tie.votes.items())
        typer.echo(f"guard: tie ({votes}), not exported: {tie.input_sha256[:16]}", err=True)
    typer.echo(f"guard: {done.summary()}", err=True)
    reviews.log("cli", "admin", "export", policy=name, items=len(done.lines))


@review_app.command("diff")
@friendly
def diff_command(
    name: Name,
    candidate: Annotated[
        str | None, typer.Argument(help="Candidate revision [default: the newest, if not current]")
    ] = None,
    db: options.Db = None,
    hold_out: HoldOut = 0.2,
    device: options.Device = "auto",
    dtype: options.Dtype = None,
    as_json: options.Json = False,
    heldout: Annotated[
        str | None,
        typer.Option(
            "--heldout",
            help="Also compare on this file of text and label (JSONL or CSV): the policy's own held-out set",
        ),
    ] = None,
):
    """The candidate against the current version on the held-out reviewed items (and with --heldout
    on the policy's own held-out file): fixed, broken, recall and FPR with 95% intervals."""
    quiet_transformers()
    from guard.eval.review_diff import review_diff

    diff = review_diff(db, name, candidate, hold_out=hold_out, device=device, dtype=dtype, heldout=heldout)
    if as_json:
        echo_json(diff.to_dict())
        return
    typer.echo(
        f"{name}: revision {diff.current['revision']} (current) vs {diff.candidate['revision']} (candidate) "
        f"on {diff.items} held-out reviewed items: {len(diff.fixed)} fixed, {len(diff.broken)} broken"
    )
    for version, rates in diff.rates.items():
        typer.echo(f"  {version:9}  recall {_share(rates['recall'])}  FPR {_share(rates['fpr'])}")
    for what, records in (("fixed", diff.fixed), ("broken", diff.broken)):
        for record in records:
            typer.echo(f"  {what}: {record['current']} -> {record['candidate']} ({record['label']}): {record['text']}")
    if diff.heldout is not None:
        on_file = diff.heldout
        typer.echo(
            f"on {on_file['file']} ({on_file['items']} items): "
            f"{len(on_file['fixed'])} fixed, {len(on_file['broken'])} broken"
        )
        for version, rates in on_file["rates"].items():
            typer.echo(f"  {version:9}  recall {_share(rates['recall'])}  FPR {_share(rates['fpr'])}")


def _share(value: dict | None) -> str:
    if value is None:
        return "n/a"
    return f"{value['value']:.1%} [{value['low']:.1%}, {value['high']:.1%}] ({value['k']}/{value['n']})"


@command("promote")
def promote_command(
    name: Name,
    version: Annotated[str, typer.Argument(help="Revision number or content version (see 'guard list --versions')")],
    db: options.Db = None,
    as_json: options.Json = False,
):
    """Make a stored version (a candidate) the one checks use; a 'guard serve --reload-every' picks it up."""
    from guard.store.database import Store
    from guard.store.reviews import Reviews

    store = Store.open(db)
    summary = store.rollback(name, version)
    Reviews(store).log("cli", "admin", "promote", policy=name, version=version)
    if as_json:
        echo_json(summary)
    else:
        typer.echo(f"'{name}' now serves revision {summary['revision']} (version {summary['version']})")


@review_app.command("stats")
@friendly
def stats_command(
    db: options.Db = None,
    as_json: options.Json = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="One CSV line per policy and time bucket")] = False,
    bucket: Annotated[
        Literal["hour", "day", "week"], typer.Option("--bucket", help="The time bucket of the flag rate and drift")
    ] = "day",
    review_sample: Annotated[
        float,
        typer.Option("--review-sample", min=0, max=1, help="The share of confident verdicts the queue sampled"),
    ] = 0.05,
):
    """Per policy: verdicts, flag rate (per time bucket too), share of inputs reviewed, the reviewers'
    agreement with the model, the precision of its flags, the false-positive rate of its confident
    verdicts on the queue's random sample (95% intervals), ties, and label drift."""
    from guard.eval.review_stats import stats, to_csv
    from guard.store.database import Store

    if as_json and as_csv:
        raise typer.BadParameter("give --json or --csv, not both")
    rows = stats(Store.open(db), bucket=bucket, sample_rate=review_sample)
    if as_csv:
        typer.echo(to_csv(rows), nl=False)
        return
    if as_json:
        for row in rows:
            echo_json(row)
        return
    for row in rows:
        typer.echo(
            f"{row['policy']}: {row['verdicts']} verdicts, flagged {_share(row['flag_rate'])}; "
            f"reviewed {_share(row['reviewed'])} of {row['inputs']} inputs; agreement {_share(row['agreement'])}; "
            f"precision of flags {_share(row['flag_precision'])}; {row['ties']} ties"
        )
        typer.echo(f"  random sample of confident verdicts: FPR {_share(row['sample_fpr'])}")
        for b in row["buckets"]:
            labels = ", ".join(f"{name} {n}" for name, n in b["labels"].items())
            typer.echo(
                f"  {b['start']}: {b['verdicts']} verdicts, flagged {_share(b['flag_rate'])}; {labels}; "
                f"drift {b['drift_total']:.1%}"
            )
