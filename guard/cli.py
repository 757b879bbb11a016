"""The `guard` command: a thin Typer layer over the library (compile, check, list, inspect).

Exit codes: 0 allowed, 1 flagged, 2 usage or input error (one line on stderr, no traceback).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Annotated, Optional

import typer

from guard.errors import GuardError

app = typer.Typer(
    help="Few-shot content moderation with Sparse Attention Vectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DbOption = Annotated[Optional[str], typer.Option("--db", help="Database path or SQLAlchemy URL [env GUARD_DB, default ./guard.db]")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto")]
DtypeOption = Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16 or float16 [default: float32 on CPU, bfloat16 on GPU]")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="Inputs per forward pass")]


def _fail(message: str) -> None:
    typer.echo(f"guard: error: {message}", err=True)
    raise typer.Exit(2)


def friendly(command):
    """Turn GuardError (bad input, missing model, bad database) into a one-line error, exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GuardError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("guard: interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@app.command("compile")
@friendly
def compile_command(
    policy_file: Annotated[str, typer.Argument(help="Policy YAML file")],
    db: DbOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    batch_size: BatchOption = 8,
    as_json: JsonOption = False,
):
    """Run the model over the policy's exemplars, fit SAV and store the artifact."""
    from guard.policy import load_policy

    policy = load_policy(policy_file)  # validate before loading any model
    _quiet_transformers()
    from guard.compiler import compile_policy
    from guard.store import Store

    store = Store.open(db, create=True)
    report = compile_policy(policy, store=store, device=device, dtype=dtype, batch_size=batch_size, progress=True)
    art = report.artifact
    summary = {
        "policy": art.name,
        "version": art.version,
        "model": art.model_reference,
        "exemplars": report.exemplars,
        "computed": report.computed,
        "cached": report.cached,
        "heads": [{"layer": layer, "head": head} for layer, head in art.heads],
        "metrics": art.metrics,
        "seconds": round(report.seconds, 2),
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    m = art.metrics
    typer.echo(
        f"compiled '{art.name}' (version {art.version}) on {art.model_info.get('model_type')}: "
        f"{report.exemplars} exemplars ({report.computed} run, {report.cached} cached), "
        f"{len(art.heads)} heads, deepest layer {art.deepest_layer}; "
        f"train accuracy {m['train_accuracy']:.1%}, leave-one-out {m['loo_accuracy']:.1%} "
        f"[{report.seconds:.1f}s]"
    )


@app.command("check")
@friendly
def check_command(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="'-' reads one text per line from stdin")] = None,
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="Text to check")] = None,
    db: DbOption = None,
    policy: Annotated[
        Optional[list[str]],
        typer.Option("--policy", "-p", help="Compiled policy name; repeat to check several policies in one pass"),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    batch_size: BatchOption = 16,
    as_json: JsonOption = False,
):
    """Check texts against compiled policies. Exit 0 if all allowed, 1 if any flagged."""
    inputs = inputs or []
    texts: list[str] = []
    if text is not None:
        texts.append(text)
    for item in inputs:
        if item != "-":
            _fail(f"'{item}': image inputs are not supported yet; use --text TEXT or '-' for stdin")
        texts.extend(line for line in sys.stdin.read().splitlines() if line.strip())
    if not texts:
        _fail("nothing to check: give --text TEXT, or '-' to read lines from stdin")
    _quiet_transformers()
    from guard.runtime import GuardSet
    from guard.store import Store

    names = policy or [Store.open(db).load_artifact().name]  # no name: the database's only policy
    guards = GuardSet.load(db, names, device=device, dtype=dtype)
    results = guards.check_batch(texts, batch_size=batch_size, progress=len(texts) > batch_size)
    for text_item, by_policy in zip(texts, results):
        if as_json and len(by_policy) == 1:
            typer.echo(json.dumps(next(iter(by_policy.values())).to_dict()))
        elif as_json:
            flagged = any(v.flagged for v in by_policy.values())
            typer.echo(json.dumps({"flagged": flagged, "policies": {n: v.to_dict() for n, v in by_policy.items()}}))
        else:
            for verdict in by_policy.values():
                _print_verdict(text_item, verdict, show_policy=len(by_policy) > 1)
    raise typer.Exit(1 if any(v.flagged for r in results for v in r.values()) else 0)


def _print_verdict(text: str, verdict, show_policy: bool = False) -> None:
    mark = "FLAGGED" if verdict.flagged else "allowed"
    shares = ", ".join(f"{name} {share:.0%}" for name, share in verdict.scores.items())
    short = text if len(text) <= 70 else text[:67] + "..."
    where = f"{verdict.policy}: " if show_policy else ""
    typer.echo(f"{mark:8} {where}{verdict.label:12} [{shares}]  {short}")


@app.command("list")
@friendly
def list_command(db: DbOption = None, as_json: JsonOption = False):
    """List the compiled policies in the database."""
    from guard.store import Store

    store = Store.open(db)
    rows = [store.load_artifact(name) for name in store.policy_names()]
    if as_json:
        typer.echo(json.dumps([_summary(art) for art in rows]))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("policy", "version", "labels (flagged*)", "model", "heads", "LOO acc", "compiled")
    for art in rows:
        s = _summary(art)
        labels = ", ".join(lab.name + ("*" if lab.flagged else "") for lab in art.labels)
        table.add_row(s["policy"], s["version"], labels, s["model"], str(s["heads"]), f"{s['loo_accuracy']:.1%}", s["compiled"])
    Console().print(table)


def _summary(art) -> dict:
    return {
        "policy": art.name,
        "version": art.version,
        "labels": art.label_names,
        "flagged": [lab.name for lab in art.labels if lab.flagged],
        "model": art.model_reference,
        "heads": len(art.heads),
        "loo_accuracy": art.metrics.get("loo_accuracy"),
        "compiled": art.created_at,
    }


@app.command("inspect")
@friendly
def inspect_command(
    name: Annotated[Optional[str], typer.Argument(help="Policy name (optional if the database holds one)")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
):
    """Show a compiled policy's selected heads and metrics."""
    from guard.store import Store

    art = Store.open(db).load_artifact(name)
    heads = [
        {"rank": rank, "layer": layer, "head": head,
         "accuracy": float(art.head_accuracy[layer, head]), "margin": float(art.head_margin[layer, head])}
        for rank, (layer, head) in enumerate(art.heads)
    ]
    if as_json:
        typer.echo(json.dumps({**_summary(art), "metrics": art.metrics, "selected_heads": heads,
                               "model_fingerprint": art.model_fingerprint, "scoring": art.scoring}))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{art.name}[/] version {art.version}  model {art.model_reference}  scoring {art.scoring}")
    for key, value in art.metrics.items():
        console.print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    table = Table("rank", "layer", "head", f"accuracy ({art.scoring})", "mean margin")
    for h in heads:
        table.add_row(str(h["rank"]), str(h["layer"]), str(h["head"]), f"{h['accuracy']:.3f}", f"{h['margin']:.4f}")
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
