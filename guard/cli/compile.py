"""`guard compile`: a policy file in, its next compiled version in the database."""

from __future__ import annotations

from typing import Annotated

import typer

from guard.cli import options
from guard.cli.output import echo_json, headline, warn
from guard.cli.root import command, quiet_transformers

AllowPath = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-path",
        help="A folder exemplar files may also come from (besides the policy's folder and data root); repeatable",
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force", help="Compile and add a revision even when the current one has the same policy, model and dtype"
    ),
]
Keep = Annotated[
    int | None,
    typer.Option("--keep", min=1, help="Keep only the newest N compiled versions of this policy [default: all]"),
]

Candidate = Annotated[
    bool,
    typer.Option(
        "--candidate",
        help="Store the new version without making it current: 'guard review diff' compares it, 'guard promote' serves it",
    ),
]


@command("compile")
def compile_command(
    policy_file: Annotated[
        str, typer.Argument(help="Policy YAML file, or the name of a policy shipped with guard (text-harm)")
    ],
    db: options.Db = None,
    device: options.Device = "auto",
    dtype: options.Dtype = None,
    batch_size: options.Batch = 8,
    threads: options.Threads = None,
    as_json: options.Json = False,
    data_root: options.DataRoot = None,
    allow_path: AllowPath = None,
    keep: Keep = None,
    force: Force = False,
    candidate: Candidate = False,
):
    """Run the model over the policy's exemplars, fit SAV and store the result as the policy's next version."""
    from guard.policy import load_policy

    policy = load_policy(policy_file, data_root=data_root, allow_paths=allow_path or ())  # before any model loads
    for note in policy.notes:  # what the exemplar readers skipped or sampled
        warn(note)
    quiet_transformers()
    from guard.compiler import compile_policy
    from guard.models import set_threads

    set_threads(threads)
    # the database opens after the model loads: a model that cannot load leaves no empty database
    report = compile_policy(
        policy,
        db,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        progress=True,
        keep=keep,
        force=force,
        candidate=candidate,
    )
    for warning in report.warnings:
        warn(warning)
    if as_json:
        echo_json(report.to_dict())
    else:
        print_report(report)


def print_report(report) -> None:
    art, m = report.artifact, report.artifact.metrics
    if report.unchanged:
        typer.echo(
            f"'{art.name}' is unchanged (version {art.version}, revision {art.revision}: same policy, model and "
            f"dtype): nothing compiled, no revision added; --force compiles it again"
        )
        return
    typer.echo(
        f"compiled '{art.name}' (version {art.version}, revision {art.revision}) on {art.model_info.get('model_type')}: "
        f"{report.exemplars} exemplars ({report.computed} run, {report.cached} cached), "
        f"{len(art.heads)} heads, deepest layer {art.deepest_layer} [{report.seconds:.1f}s]"
    )
    typer.echo(f"  {headline(art.summary())}")
    typer.echo(f"  on the exemplars it was fitted on (optimistic): {m['train_accuracy']:.1%}")
    if report.candidate:
        typer.echo(f"  a candidate: not served until 'guard promote {art.name} {art.revision}'")
