"""`guard audit`: list, export or prune the audit log that `guard serve --audit` writes."""

from __future__ import annotations

from typing import Annotated

import typer

from guard.cli import options
from guard.cli.output import echo_json, print_table
from guard.cli.root import command

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
        "--erase-sha256",
        help="Erase the text of the input with this hash (from 'guard audit --json') from the audit log and "
        "the reviews' copies, keeping the rows; repeatable",
    ),
]
PruneDays = Annotated[
    float | None, typer.Option("--prune-days", min=0, help="Delete rows older than this many days, then report")
]


@command("audit")
def audit_command(
    db: options.Db = None,
    since: Since = None,
    policy: Annotated[str | None, typer.Option("--policy", "-p", help="Only this policy's rows")] = None,
    flagged: Flagged = None,
    limit: Limit = None,
    as_json: JsonRows = False,
    prune_days: PruneDays = None,
    erase_sha256: Erase = None,
):
    """List or export the audit log that 'guard serve --audit' writes; --prune-days prunes it, --erase-sha256 erases a text."""
    from datetime import datetime, timedelta, timezone

    from guard.store.audit import AuditLog, parse_since
    from guard.store.database import Store

    log = AuditLog(Store.open(db))
    if erase_sha256:
        for digest in erase_sha256:
            rows, copies = log.erase(digest.strip().lower())
            typer.echo(f"erased the text of {digest[:16]}... from {rows} audit rows and {copies} reviews")
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
