"""The `guard` command: a thin Typer layer over the library (compile, check, list, inspect).

Exit codes: 0 allowed, 1 flagged, 2 usage or input error (one line on stderr, no traceback).
"""

from __future__ import annotations

import functools
import json
import os
import string
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
    data_root: Annotated[Optional[str], typer.Option("--data-root", help="Folder holding the datasets a policy's 'data_root:' names [env GUARD_DATA_ROOT]")] = None,
):
    """Run the model over the policy's exemplars, fit SAV and store the artifact."""
    from guard.policy import load_policy

    policy = load_policy(policy_file, data_root=data_root)  # validate before loading any model
    for note in policy.notes:  # what the exemplar readers skipped or sampled
        typer.echo(f"guard: {note}", err=True)
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
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Image files, or '-' to read one text per line from stdin")] = None,
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="Text to check")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Text that goes with each image (fills the policy prompt's {text})")] = None,
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
    """Check texts or images against compiled policies. Exit 0 if all allowed, 1 if any flagged."""
    items: list[tuple[str, dict]] = []  # (what to call it in the output, the input)
    if text is not None:
        items.append((text, {"text": text}))
    image_paths = [item for item in inputs or [] if item != "-"]
    if "-" in (inputs or []):
        items.extend((line, {"text": line}) for line in sys.stdin.read().splitlines() if line.strip())
    if image_paths:
        from guard.images import load_image

        fields = {} if prompt is None else {"text": prompt}
        items.extend((path, {**fields, "images": [load_image(path)]}) for path in image_paths)  # bad files stop here
    elif prompt is not None:
        _fail("--prompt goes with images: guard check IMAGE... --prompt TEXT (use --text TEXT for a text alone)")
    if not items:
        _fail("nothing to check: give --text TEXT, image files, or '-' to read lines from stdin")
    _quiet_transformers()
    from guard.runtime import GuardSet
    from guard.store import Store

    names = policy or [Store.open(db).load_artifact().name]  # no name: the database's only policy
    guards = GuardSet.load(db, names, device=device, dtype=dtype)
    for art in (p.artifact for p in guards.policies):
        if image_paths and prompt is None and "text" in {f for _, f, _, _ in string.Formatter().parse(art.prompt) if f}:
            _fail(f"policy '{art.name}' puts text with each image ({{text}} in its prompt): add --prompt TEXT")
    results = guards.check_batch([item for _, item in items], batch_size=batch_size, progress=len(items) > batch_size)
    for (name, item), by_policy in zip(items, results):
        if as_json:
            if len(by_policy) == 1:
                record = next(iter(by_policy.values())).to_dict()
            else:
                flagged = any(v.flagged for v in by_policy.values())
                record = {"flagged": flagged, "policies": {n: v.to_dict() for n, v in by_policy.items()}}
            typer.echo(json.dumps({"image": name, **record} if "images" in item else record))
        else:
            for verdict in by_policy.values():
                _print_verdict(name, verdict, show_policy=len(by_policy) > 1)
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
