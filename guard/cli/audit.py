"""`guard audit`: list, export or prune the audit log that `guard serve --audit` writes;
`guard audit erase --sha256 H` erases one input's text (`guard audit --erase-sha256 H` still works)."""

from __future__ import annotations

from typing import Annotated

import typer

from guard.cli import options
from guard.cli.output import echo_json, print_table
from guard.cli.root import app, friendly

audit_app = typer.Typer(
    help="List or export the audit log that 'guard serve --audit' writes; --prune-days prunes it; "
    "'guard audit erase' erases a text.",
    rich_markup_mode=None,
)
app.add_typer(audit_app, name="audit")

Since = Annotated[
    str | None, typer.Option("--since", help="Only rows from then on: 30m, 12h, 7d, 2w or an ISO date/time")
]
Flagged = Annotated[bool | None, typer.Option("--flagged/--allowed", help="Only flagged (or only allowed) verdicts")]
Limit = Annotated[
    int | None, typer.Option("--limit", min=1, help="The newest N rows [default: all with --json, else 50]")
]
JsonRows = options.as_json("Export as JSON lines, one row each")
Erase = Annotated[
    list[str] | None,
    typer.Option(
        "--erase-sha256", help="The same as 'guard audit erase --sha256' (kept for scripts written before it)"
    ),
]
Hashes = Annotated[
    list[str],
    typer.Option(
        "--sha256",
        help="The input's hash (from 'guard audit --json'): its text is erased from the audit log and the "
        "reviews' copies, keeping the rows; repeatable",
    ),
]
PruneDays = Annotated[
    float | None, typer.Option("--prune-days", min=0, help="Delete rows older than this many days, then report")
]


@audit_app.callback(invoke_without_command=True)
@friendly
def audit_command(
    ctx: typer.Context,
    db: options.Db = None,
    since: Since = None,
    policy: Annotated[str | None, typer.Option("--policy", "-p", help="Only this policy's rows")] = None,
    flagged: Flagged = None,
    limit: Limit = None,
    as_json: JsonRows = False,
    prune_days: PruneDays = None,
    erase_sha256: Erase = None,
):
    """List or export the audit log that 'guard serve --audit' writes; --prune-days prunes it; 'guard audit erase' erases a text."""
    from datetime import datetime, timedelta, timezone

    from guard.store.audit import AuditLog, parse_since
    from guard.store.database import Store

    if ctx.invoked_subcommand is not None:
        return
    log = AuditLog(Store.open(db))
    if erase_sha256:
        erase(log, erase_sha256)
        return
    if prune_days is not None:
        before = datetime.now(timezone.utc) - timedelta(days=prune_days)
        typer.echo(f"pruned {log.prune(before)} audit rows older than {before.isoformat(timespec='seconds')}")
        return
    start = parse_since(since) if since else None
    rows = log.query(since=start, policy=policy, flagged=flagged, limit=limit or (None if as_json else 50))
    if as_json:
        for row in rows:
            echo_json(row.to_dict())
    else:
        print_rows(rows)


@audit_app.command("erase")
@friendly
def erase_command(sha256: Hashes, db: options.Db = None):
    """Erase an input's text (by its hash) from the audit log and the reviews' copies; the rows stay,
    so counts and verdicts do not change."""
    from guard.store.audit import AuditLog
    from guard.store.database import Store

    erase(AuditLog(Store.open(db)), sha256)


def erase(log, digests: list[str]) -> None:
    for digest in digests:
        rows, copies = log.erase(digest.strip().lower())
        typer.echo(f"erased the text of {digest[:16]}... from {rows} audit rows and {copies} reviews")


def print_rows(rows) -> None:
    from rich.table import Table

    table = Table("time (UTC)", "request", "policy", "version", "label", "flagged", "ms", "input hash")
    for row in rows:
        table.add_row(
            row.created_at[:23],
            f"{row.request_id[:12]}/{row.item}",
            row.policy,
            row.policy_version,
            row.label,
            "yes" if row.flagged else "no",
            f"{row.latency_ms:.0f}",
            row.input_sha256[:16],
        )
    print_table(table)
