"""The `guard` command: a thin Typer layer over the library (compile, check, list, inspect).

Exit codes: 0 allowed, 1 flagged, 2 usage or input error (one line on stderr, no traceback).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from typing import Annotated

import click
import typer

from guard.errors import GuardError

app = typer.Typer(
    help="Few-shot content moderation with Sparse Attention Vectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Rich markup would read "[env GUARD_DB, default ./guard.db]" in help texts as a style tag
    # and drop it; help is shown as written.
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from guard import __version__

        typer.echo(f"guard {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show guard's version and exit"),
    ] = None,
):
    """Few-shot content moderation with Sparse Attention Vectors."""


DbOption = Annotated[
    str | None, typer.Option("--db", help="Database path or SQLAlchemy URL [env GUARD_DB, default ./guard.db]")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto")]
DtypeOption = Annotated[
    str | None,
    typer.Option("--dtype", help="float32, bfloat16 or float16 [default: float32 on CPU, bfloat16 on GPU]"),
]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="Inputs per forward pass")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="torch intra-op threads per forward [env GUARD_THREADS, default: torch's, one per core]",
    ),
]


def _fail(message: str) -> None:
    typer.echo(f"guard: error: {message}", err=True)
    raise typer.Exit(2)


def friendly(command):
    """Every failure is one line on stderr and exit 2 (1 means "flagged", so a crash must never
    exit 1): GuardError says what is wrong; anything else is a bug, reported as one line too, with
    the traceback only when GUARD_DEBUG=1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException):
            raise
        except GuardError as exc:
            _fail(_one_line(exc))
        except KeyboardInterrupt:
            typer.echo("guard: interrupted", err=True)
            raise typer.Exit(130) from None
        except MemoryError:
            _fail("out of memory")
        except Exception as exc:
            if os.environ.get("GUARD_DEBUG") == "1":
                traceback.print_exc()
            _fail(f"internal error ({type(exc).__name__}: {_one_line(exc)}); GUARD_DEBUG=1 shows the traceback")

    return wrapper


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _need_extra(module: str, what: str, extra: str) -> None:
    """One line instead of an ImportError when an optional part is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        _fail(f"{what} needs the '{extra}' extra: pip install 'guard[{extra}]'")


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
    threads: ThreadsOption = None,
    as_json: JsonOption = False,
    data_root: Annotated[
        str | None,
        typer.Option(
            "--data-root", help="Folder holding the datasets a policy's 'data_root:' names [env GUARD_DATA_ROOT]"
        ),
    ] = None,
    allow_path: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-path",
            help="A folder exemplar files may also come from (besides the policy's folder and data root); repeatable",
        ),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option("--keep", min=1, help="Keep only the newest N compiled versions of this policy [default: all]"),
    ] = None,
):
    """Run the model over the policy's exemplars, fit SAV and store the result as the policy's next version."""
    from guard.policy import load_policy

    policy = load_policy(policy_file, data_root=data_root, allow_paths=allow_path or ())  # before any model loads
    for note in policy.notes:  # what the exemplar readers skipped or sampled
        typer.echo(f"guard: {note}", err=True)
    _quiet_transformers()
    from guard.compiler import compile_policy
    from guard.models import set_threads

    set_threads(threads)
    # the database opens after the model loads: a model that cannot load leaves no empty database
    report = compile_policy(policy, db, device=device, dtype=dtype, batch_size=batch_size, progress=True, keep=keep)
    for warning in report.warnings:
        typer.echo(f"guard: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    art, m = report.artifact, report.artifact.metrics
    typer.echo(
        f"compiled '{art.name}' (version {art.version}, revision {art.revision}) on {art.model_info.get('model_type')}: "
        f"{report.exemplars} exemplars ({report.computed} run, {report.cached} cached), "
        f"{len(art.heads)} heads, deepest layer {art.deepest_layer} [{report.seconds:.1f}s]"
    )
    typer.echo(f"  {_headline(art.summary())}")
    typer.echo(f"  on the exemplars it was fitted on (optimistic): {m['train_accuracy']:.1%}")


def _headline(summary) -> str:
    from guard.method.artifact import headline_words

    acc = summary.headline_accuracy
    if acc is None:
        return "cross-fitted accuracy: not computed (too few exemplars per label)"
    return f"{acc:.1%} {headline_words(summary.metrics)}"


@app.command("check")
@friendly
def check_command(
    inputs: Annotated[
        list[str] | None, typer.Argument(help="Image files, or '-' to read one text per line from stdin")
    ] = None,
    text: Annotated[str | None, typer.Option("--text", "-t", help="Text to check")] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="Text that goes with each image (fills the policy prompt's {text})"),
    ] = None,
    db: DbOption = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            "-p",
            help="Compiled policy name, or NAME@REVISION / NAME@VERSION for an older one; repeat for several",
        ),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    batch_size: BatchOption = 16,
    threads: ThreadsOption = None,
    as_json: JsonOption = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show each selected head's vote and the closest exemplars")
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="torch (the compiled policy on its model) or onnx (an export, see --onnx)"),
    ] = None,
    onnx_dir: Annotated[
        str | None, typer.Option("--onnx", help="Folder written by 'guard export NAME --onnx DIR' (text only)")
    ] = None,
):
    """Check texts or images against compiled policies. Exit 0 if all allowed, 1 if any flagged, 2 if any input error."""
    items: list[tuple[dict, str, dict]] = []  # (where the input came from, its name for people, the input)
    from guard.limits import check_fields

    if text is not None:
        items.append(({}, text, check_fields({"text": text})))
    image_paths = [item for item in inputs or [] if item != "-"]
    from_stdin = "-" in (inputs or [])  # streamed below, one record per line
    if image_paths:
        from guard.models.images import load_image

        fields = {} if prompt is None else check_fields({"text": prompt})
        items.extend(({"image": path}, path, {**fields, "images": [load_image(path)]}) for path in image_paths)
    elif prompt is not None:
        _fail("--prompt goes with images: guard check IMAGE... --prompt TEXT (use --text TEXT for a text alone)")
    if not items and not from_stdin:
        _fail("nothing to check: give --text TEXT, image files, or '-' to read lines from stdin")
    stdin_lines, errors = None, 0
    if from_stdin and not items and not _onnx_engine(engine, onnx_dir):
        # stdin is read before the database and the model: lines that cannot be checked (too long,
        # not UTF-8, empty, NUL) are refused at once, and when no other line follows, nothing loads
        stdin_lines, errors = _refuse_leading_lines(as_json)
        if stdin_lines is None and errors:
            raise typer.Exit(2)
    if _onnx_engine(engine, onnx_dir):
        if from_stdin:  # the ONNX engine takes stdin whole; blank and undecodable lines stay as errors
            from guard.scanning.readers import Shard, read_text

            for line in read_text(Shard("-", "text")):
                text_of_line = line.fields.get("text", "")
                error = line.error or (None if text_of_line.strip() else "empty text: nothing to check")
                items.append(({"line": line.id}, error or text_of_line, None if error else {"text": text_of_line}))
        _check_with_onnx(items, onnx_dir, policy, batch_size, threads, as_json, explain)
    _quiet_transformers()
    from guard.check.engine import GuardSet
    from guard.models import set_threads
    from guard.policy import template_fields
    from guard.store.database import Store

    store = Store.open(db)
    artifacts = [store.load_artifact(name) for name in policy] if policy else [store.load_artifact()]
    for art in artifacts:  # before the model loads: a usage error should cost nothing
        if image_paths and prompt is None and "text" in template_fields(art.prompt):
            _fail(f"policy '{art.name}' puts text with each image ({{text}} in its prompt): add --prompt TEXT")
        if image_paths and not _takes_images(art):
            _fail(f"policy '{art.name}' runs on '{art.model_reference}', which is a text model; it cannot take images")
    set_threads(threads)
    guards = GuardSet.with_model(artifacts, device=device, dtype=dtype)
    for warning in guards.warnings:
        typer.echo(f"guard: {warning}", err=True)
    results = guards.check_batch(
        [item for _, _, item in items], batch_size=batch_size, progress=len(items) > batch_size, explain=explain
    )
    for (origin, name, _), result in zip(items, results):
        _show_result(origin, name, result, as_json, explain)
    flagged = any(result.flagged for result in results)
    if from_stdin:
        lines_flagged, line_errors = _check_stdin(guards, stdin_lines, batch_size, as_json, explain)
        flagged, errors = flagged or lines_flagged, errors + line_errors
    raise typer.Exit(2 if errors else 1 if flagged else 0)


def _takes_images(art) -> bool:
    from guard.models.architectures import ARCHITECTURES

    arch = ARCHITECTURES.get(art.model_info.get("model_type"))
    return arch is None or arch.multimodal  # unknown: let the model say


def _show_result(origin: dict, name: str, result, as_json: bool, explain: bool) -> None:
    if as_json:
        typer.echo(json.dumps({**origin, **result.to_dict()}))
        return
    for verdict in result.values():
        _print_verdict(name, verdict, show_policy=len(result) > 1)
        if explain:
            _print_explanation(verdict.explanation)


def _refuse_leading_lines(as_json: bool):
    """Read stdin up to its first line that guard.limits lets through, writing an error record
    for each line before it. Returns (the rest of stdin's lines, that line first, or None at the
    end of stdin; the number of error records written). Imports nothing heavy."""
    import itertools

    from guard.errors import InputError
    from guard.limits import check_fields
    from guard.scanning.readers import Shard, read_text

    lines, errors = read_text(Shard("-", "text")), 0
    for item in lines:
        reason = item.error
        if reason is None:
            try:
                check_fields(item.fields)
            except InputError as exc:
                reason = str(exc)
        if reason is None:
            return itertools.chain([item], lines), errors
        errors += 1
        _show_line_error(item.id, reason, as_json)
    sys.stdout.flush()
    return None, errors


def _show_line_error(line: int, reason: str, as_json: bool) -> None:
    typer.echo(json.dumps({"line": line, "error": reason}) if as_json else f"{'error':8} line {line}: {reason}")


def _check_stdin(guards, lines, batch_size: int, as_json: bool, explain: bool) -> tuple[bool, int]:
    """Stream stdin (or `lines`, what is left of it) through the scanner: one output per line,
    blank and undecodable lines included (as errors), each written as its window completes.
    Returns (any flagged, errors)."""
    from guard.scanning.readers import Shard, read_text
    from guard.scanning.scanner import WINDOW_BATCHES, check_items, windows

    flagged, errors = False, 0
    for chunk in windows(read_text(Shard("-", "text")) if lines is None else lines, batch_size * WINDOW_BATCHES):
        for item, outcome in zip(chunk, check_items(guards, chunk, batch_size, explain=explain)):
            if isinstance(outcome, str):
                errors += 1
                _show_line_error(item.id, outcome, as_json)
            else:
                flagged = flagged or outcome.flagged
                _show_result({"line": item.id}, item.fields["text"], outcome, as_json, explain)
        sys.stdout.flush()
    return flagged, errors


@app.command("scan")
@friendly
def scan_command(
    inputs: Annotated[
        list[str],
        typer.Argument(help="JSONL, CSV, Parquet, text (one item per line), a folder of images, or '-' (stdin)"),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Results file: .jsonl or .parquet")],
    db: DbOption = None,
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", "-p", help="Compiled policy name; repeat for several (one forward per shared prompt)"),
    ] = None,
    id_field: Annotated[
        str | None, typer.Option("--id-field", help="Column holding each item's id [default: the line or row number]")
    ] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Column holding the text to check")] = "text",
    image_field: Annotated[
        str | None, typer.Option("--image-field", help="Column naming an image file (a manifest of images)")
    ] = None,
    images: Annotated[
        str | None, typer.Option("--images", help="Folder --image-field paths start from [default: the manifest's]")
    ] = None,
    data_root: Annotated[
        str | None,
        typer.Option(
            "--data-root",
            help="Folder --image-field paths must stay inside (absolute and ../ paths leading out are refused) "
            "[default: the --images folder, else the manifest's]",
        ),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Text that goes with each image (fills {text})")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="Input format if the extension does not say: jsonl, csv, parquet, text, images"),
    ] = None,
    batch_size: BatchOption = 16,
    window: Annotated[
        int | None, typer.Option("--window", min=1, help="Items read and length-bucketed together [default: 8 batches]")
    ] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Add each selected head's vote to the records")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted scan into the same --out")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    threads: ThreadsOption = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run on Ray Data (pip install 'guard[ray]')")] = False,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="An existing Ray cluster [default: start Ray locally]")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="--ray: model actors (each loads the model once)")
    ] = 1,
):
    """Check a whole corpus: streamed, one record per item in input order, resumable.
    Exit 0 nothing flagged, 1 something flagged, 2 the scan failed."""
    import time

    from guard.scanning.readers import Columns, detect_format, read_items
    from guard.scanning.writers import existing, output_format, skip_done

    output_format(out)
    kinds = {detect_format(path, fmt) for path in inputs}
    if "parquet" in kinds or output_format(out) == "parquet":
        from guard.scanning.readers import _pyarrow_parquet

        _pyarrow_parquet()  # fail now, not after the scan
    _quiet_transformers()
    from guard.models import set_threads
    from guard.policy import template_fields
    from guard.store.database import Store

    store = Store.open(db)
    artifacts = [store.load_artifact(name) for name in policy] if policy else [store.load_artifact()]
    set_threads(threads)
    needed = set().union(*(template_fields(art.prompt) for art in artifacts))
    if "images" in kinds and "text" in needed and prompt is None:
        _fail("the policy prompt has {text}: add --prompt TEXT to go with each image")
    columns = Columns(
        id=id_field,
        text=text_field,
        image=image_field,
        extra=tuple(sorted(needed - {"text"})),
        prompt=prompt,
        images=images,
        data_root=data_root,
    )
    done = existing(out, resume, overwrite)
    started = time.monotonic()
    if ray:
        from guard.scanning.ray_data import ray_scan_windows

        batches = ray_scan_windows(
            inputs,
            artifacts,
            columns,
            fmt=fmt,
            progress=done,
            address=ray_address,
            workers=workers,
            batch_size=batch_size,
            window=window,
            votes=explain,
            device=device,
            dtype=dtype,
        )
    else:
        from guard.check.engine import GuardSet
        from guard.scanning.scanner import scan_windows

        items = skip_done(read_items(inputs, columns, fmt), done)
        guards = GuardSet.with_model(artifacts, device=device, dtype=dtype)
        batches = scan_windows(items, guards, batch_size=batch_size, window=window, votes=explain)
    summary = _write_scan(batches, out, done, artifacts, inputs, fmt, quiet, explain)
    _print_scan_summary(summary, out, time.monotonic() - started, done.records, as_json)
    raise typer.Exit(1 if summary.flagged else 0)


def _write_scan(batches, out: str, done, artifacts, inputs, fmt, quiet: bool, votes: bool):
    """Write each window's records as it completes, with a progress bar; convert at the end."""
    import signal

    from tqdm.auto import tqdm

    from guard.scanning.readers import count_items
    from guard.scanning.writers import JsonlWriter, finish, record_schema, staging_path

    show = not quiet and sys.stderr.isatty()
    total = count_items(inputs, fmt) if show else None
    summary = done.summary
    writer = JsonlWriter(staging_path(out))
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a polite kill keeps what was written, as Ctrl-C does
    try:
        with tqdm(total=total, initial=done.records, unit="item", disable=not show, file=sys.stderr) as bar:
            for records in batches:
                writer.write(records)
                for record in records:
                    summary.add(record)
                bar.update(len(records))
    except KeyboardInterrupt:
        writer.close()
        typer.echo(f"guard: interrupted after {summary.items} items; continue with --resume", err=True)
        raise typer.Exit(130) from None
    except OSError as exc:  # a full disk, say: what was written stays, and --resume continues it
        _fail(f"cannot write {out} ({exc.strerror or exc}); continue with --resume once fixed")
    finally:
        writer.close()
        signal.signal(signal.SIGTERM, previous)
    finish(out, record_schema({a.name: a.label_names for a in artifacts}, votes=votes))
    return summary


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _print_scan_summary(summary, out: str, seconds: float, resumed: int, as_json: bool) -> None:
    new = summary.items - resumed
    rate = new / seconds if seconds > 0 else 0.0
    if as_json:
        typer.echo(
            json.dumps(
                {
                    **summary.to_dict(),
                    "resumed": resumed,
                    "seconds": round(seconds, 3),
                    "items_per_second": round(rate, 2),
                    "out": out,
                }
            )
        )
        return
    typer.echo(
        f"scanned {summary.items} items into {out}: {summary.checked} checked, {summary.flagged} flagged, "
        f"{summary.errors} errors ({new} now at {rate:.1f} items/s{f', {resumed} before' if resumed else ''})"
    )
    for name, labels in summary.labels.items():
        typer.echo(f"  {name}: " + ", ".join(f"{label} {n}" for label, n in labels.items()))


def _onnx_engine(engine: str | None, onnx_dir: str | None) -> bool:
    """Whether `guard check` runs an ONNX export (--engine onnx, or --onnx DIR alone)."""
    if engine not in (None, "torch", "onnx"):
        _fail(f"--engine is torch or onnx, not '{engine}'")
    if engine == "onnx" and onnx_dir is None:
        _fail("--engine onnx needs --onnx DIR (a folder written by 'guard export NAME --onnx DIR')")
    if engine == "torch" and onnx_dir is not None:
        _fail("--onnx DIR goes with --engine onnx")
    return onnx_dir is not None


def _check_with_onnx(items, onnx_dir, policy, batch_size: int, threads, as_json: bool, explain: bool):
    """`guard check` on onnxruntime: texts only, one exported policy; output as the torch path's."""
    if policy and len(policy) > 1:
        _fail("the ONNX engine checks one exported policy at a time")
    if explain:
        _fail("--explain needs the compiled policy's exemplars: use the torch engine")
    if any(item and "images" in item for _, _, item in items):
        _fail("the ONNX engine checks text only; check images with the torch engine")
    _quiet_transformers()
    from guard.check.engine import CheckResult
    from guard.onnx.engine import OnnxGuard

    engine = OnnxGuard.load(onnx_dir, threads=threads)
    if policy and policy[0] != engine.name:
        _fail(f"{onnx_dir} holds an export of policy '{engine.name}', not '{policy[0]}'")
    checked = iter(engine.check_batch([item for _, _, item in items if item is not None], batch_size=batch_size))
    flagged = errors = 0
    for origin, name, item in items:
        if item is None:  # a stdin line that cannot be checked: `name` is the reason
            errors += 1
            typer.echo(
                json.dumps({**origin, "error": name}) if as_json else f"{'error':8} line {origin['line']}: {name}"
            )
            continue
        verdict = next(checked)
        flagged += verdict.flagged
        if as_json:
            typer.echo(json.dumps({**origin, **CheckResult({engine.name: verdict}).to_dict()}))
        else:
            _print_verdict(name, verdict)
    raise typer.Exit(2 if errors else 1 if flagged else 0)


def _print_verdict(text: str, verdict, show_policy: bool = False) -> None:
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
    typer.echo(f"{mark:8} {where}{verdict.label:12} {why}{unsure}  {short}")


def _print_explanation(why: dict) -> None:
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


@app.command("list")
@friendly
def list_command(
    db: DbOption = None,
    as_json: JsonOption = False,
    versions: Annotated[
        bool, typer.Option("--versions", help="Every stored version of each policy, not only the current one")
    ] = False,
    name: Annotated[str | None, typer.Argument(help="Only this policy (with --versions)")] = None,
):
    """List the compiled policies in the database (read without their vectors); --versions: with their earlier versions."""
    from guard.store.database import Store

    store = Store.open(db)
    if versions or name:
        _list_versions(store.versions(name), as_json)
        return
    summaries = store.summaries()
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in summaries]))
        return
    from rich.console import Console
    from rich.table import Table

    from guard.method.artifact import ESTIMATORS, HEADLINE, estimator

    table = Table("policy", "version", "labels (flagged*)", "model", "heads", "accuracy", "compiled")
    for s in summaries:
        labels = ", ".join(name + ("*" if name in s.flagged else "") for name in s.labels)
        acc = "-" if s.headline_accuracy is None else f"{s.headline_accuracy:.1%}"
        table.add_row(s.policy, s.version, labels, s.model, str(s.heads), f"{acc} ({estimator(s.metrics)})", s.compiled)
    console = Console()
    console.print(table, markup=False)
    words = HEADLINE.format(estimator=" or ".join(ESTIMATORS.values()))
    console.print("accuracy: " + words, markup=False)


def _list_versions(rows: list[dict], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("policy", "rev", "version", "current", "compiled", "dtype", "device")
    for r in rows:
        current = "*" if r["current"] else ""
        table.add_row(
            r["policy"], str(r["revision"]), r["version"], current, r["compiled"], r["dtype"] or "?", r["device"] or "?"
        )
    Console().print(table, markup=False)


@app.command("rollback")
@friendly
def rollback_command(
    name: Annotated[str, typer.Argument(help="Policy name")],
    version: Annotated[str, typer.Argument(help="Revision number or content version (see 'guard list --versions')")],
    db: DbOption = None,
    as_json: JsonOption = False,
):
    """Make an earlier compiled version of a policy the one that 'guard check' uses."""
    from guard.store.database import Store

    row = Store.open(db).rollback(name, version)
    if as_json:
        typer.echo(json.dumps(row))
    else:
        typer.echo(f"'{name}' now checks with revision {row['revision']} (version {row['version']}, {row['compiled']})")


# What the calibration reads per label, by vote rule (guard.method.sav.label_values), in inspect's formula.
VALUE_WORDS = {
    "count": "the label's share of the heads' votes",
    "margin": "the heads' mean similarity to the label minus the best other label's",
}


@app.command("inspect")
@friendly
def inspect_command(
    name: Annotated[str | None, typer.Argument(help="Policy name (optional if the database holds one)")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
    plot: Annotated[
        str | None, typer.Option("--plot", help="Write a PNG: head accuracy map and exemplars at the best head")
    ] = None,
    size: Annotated[
        str | None, typer.Option("--size", help="Plot size in pixels, WIDTHxHEIGHT [default 1400x600]")
    ] = None,
):
    """Show a compiled policy's selected heads, metrics and calibration; optionally plot them."""
    from guard.method.calibration import VOTE_BOUNDARY
    from guard.store.database import Store

    art = Store.open(db).load_artifact(name)
    if plot:
        _need_extra("matplotlib", "--plot", "eval")
        _need_extra("sklearn", "--plot", "eval")
        from guard.eval.plots import POLICY_SIZE, parse_size, policy_figure

        policy_figure(art, plot, parse_size(size, POLICY_SIZE))
        typer.echo(f"wrote {plot}", err=as_json)
    view = art.to_dict()
    if as_json:
        typer.echo(json.dumps(view))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    out = functools.partial(console.print, markup=False)
    out(f"{art.name} version {art.version}  model {art.model_reference}  scoring {art.scoring}")
    out(f"  {_headline(art.summary())}")
    for key, value in art.metrics.items():
        out(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    table = Table("rank", "layer", "head", f"accuracy ({art.scoring})", "mean margin")
    for h in view["selected_heads"]:
        table.add_row(str(h["rank"]), str(h["layer"]), str(h["head"]), f"{h['accuracy']:.3f}", f"{h['margin']:.4f}")
    out(table)
    cal = view["calibration"]
    if cal is None:
        out("calibration: none (compiled before calibration, or too few exemplars per label)")
        return
    value = VALUE_WORDS[art.vote]
    out(f"calibration: {cal['method']}; x = {value}")
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
        out(line)
    margin = cal["uncertain_margin"]
    out(
        "uncertain: P(verdict's label) < 0.50"
        + (f", or a vote margin (most votes - next, as a share of heads) below {margin:.2f}" if margin else "")
    )


@app.command("export")
@friendly
def export_command(
    policy: Annotated[
        str | None, typer.Argument(help="Compiled policy name (optional if the database has one)")
    ] = None,
    onnx_dir: Annotated[str, typer.Option("--onnx", help="Write the ONNX export to this folder")] = ...,
    db: DbOption = None,
    as_json: JsonOption = False,
):
    """Export a compiled policy's text path to ONNX (graph, manifest, tokenizer) for 'guard check --engine onnx'."""
    _quiet_transformers()
    from guard.onnx.export import export_onnx
    from guard.store.database import Store

    report = export_onnx(Store.open(db).load_artifact(policy), onnx_dir)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    typer.echo(
        f"exported '{report.policy}' to {report.directory}: {report.layers} decoder layers, "
        f"{report.onnx_bytes / 1e6:.1f} MB; onnxruntime vs torch on a sample, largest similarity gap "
        f"{report.max_similarity_error:.1e} [{report.seconds:.1f}s]"
    )


@app.command("eval")
@friendly
def eval_command(
    policy_file: Annotated[str, typer.Argument(help="Policy YAML file")],
    test_file: Annotated[
        str | None,
        typer.Argument(
            help="Labelled data in any exemplar format (JSONL/CSV with text and label, VLGuard, MHaluBench, an "
            "image folder); not with --leave-one-source-out"
        ),
    ] = None,
    db: DbOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    batch_size: BatchOption = 8,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Format of the test data if its extension does not say (jsonl, csv, vlguard, mhalubench, sav-shots, folder)",
        ),
    ] = None,
    images: Annotated[
        str | None,
        typer.Option("--images", help="Folder the test data's image paths start from [default: its folder]"),
    ] = None,
    folder_text: Annotated[
        str | None, typer.Option("--text", help="format folder: the text that goes with every image")
    ] = None,
    task_type: Annotated[
        str | None,
        typer.Option("--task-type", help="format mhalubench: keep items of this task_type (e.g. image-to-text)"),
    ] = None,
    data_root: Annotated[
        str | None,
        typer.Option(
            "--data-root", help="Folder holding the datasets a policy's 'data_root:' names [env GUARD_DATA_ROOT]"
        ),
    ] = None,
    baselines: Annotated[
        bool,
        typer.Option(
            "--baselines", help="Also zero-shot, linear probe (all heads), nearest centroid (last hidden state)"
        ),
    ] = False,
    shots: Annotated[
        str | None, typer.Option("--shots", help="Re-fit with n exemplars per label, e.g. 5,10,20,40")
    ] = None,
    heads: Annotated[str | None, typer.Option("--heads", help="Re-fit with k heads, e.g. 1,5,10,20,40")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Random draws per --shots value")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --shots draws")] = 0,
    max_layers: Annotated[
        str | None,
        typer.Option(
            "--max-layers", help="Re-fit with no head deeper than each layer, e.g. 8,12,16,20; times each depth"
        ),
    ] = None,
    attacks: Annotated[
        bool,
        typer.Option("--attacks", help="Attack every flagged test item (injections, language, noise); count flips"),
    ] = False,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Rates per group of items: source (a record's 'source' field, else its file: an exemplar's "
            "from: file, the policy for inline ones, the test file) [loso default], file, label, or any record field",
        ),
    ] = None,
    loso: Annotated[
        bool,
        typer.Option(
            "--leave-one-source-out",
            help="Hold each group of exemplars out of a fit on the others (as compile fits) and judge it; no test file",
        ),
    ] = False,
    split: Annotated[
        str | None, typer.Option("--split", help="file (the test file, the default) or loso (= --leave-one-source-out)")
    ] = None,
    errors: Annotated[
        str | None,
        typer.Option("--errors", help="Write every item SAV misjudged as JSONL (text, group, labels, scores, votes)"),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="embed: sentence embedding (all-MiniLM-L6-v2, extra 'embed') + logistic regression on the same "
            "split; embed:DIR for a local sentence-transformers model",
        ),
    ] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Write the sweep curves to this PNG")] = None,
    size: Annotated[
        str | None, typer.Option("--size", help="Plot size in pixels, WIDTHxHEIGHT [default 1200x500]")
    ] = None,
    threads: ThreadsOption = None,
    as_json: JsonOption = False,
):
    """Measure a policy on a labelled file, or source by source (--leave-one-source-out): SAV (as
    'guard check' decides) next to baselines, same model, same split."""
    _need_extra("sklearn", "guard eval", "eval")
    if plot:
        _need_extra("matplotlib", "--plot", "eval")
    from guard.eval.evaluate import parse_int_list
    from guard.eval.plots import SWEEP_SIZE, parse_size
    from guard.policy import load_policy

    loso = _eval_split(split, loso, test_file)
    if baseline:
        from guard.eval.baselines import embed_model_dir

        embed_model_dir(baseline)  # a missing extra or model folder: one line, before any work
    if loso:
        sweeps = {"--baselines": baselines, "--shots": shots, "--heads": heads, "--max-layers": max_layers}
        sweeps.update({"--attacks": attacks, "--plot": plot})
        given = [name for name, value in sweeps.items() if value]
        if given:
            _fail(f"--leave-one-source-out does not take {', '.join(given)} (they need a test file)")
        policy = load_policy(policy_file, data_root=data_root)
        _quiet_transformers()
        return _eval_loso(policy, db, device, dtype, batch_size, group_by, baseline, errors, threads, as_json)
    policy = load_policy(policy_file, data_root=data_root)
    shot_list, head_list = parse_int_list(shots, "--shots"), parse_int_list(heads, "--heads")
    depth_list = parse_int_list(max_layers, "--max-layers", minimum=0)
    plot_size = parse_size(size, SWEEP_SIZE)
    if plot and not (shot_list or head_list or depth_list):
        _fail("--plot draws the sweeps: give --shots, --heads and/or --max-layers")
    _quiet_transformers()
    from guard.eval.evaluate import evaluate, print_evaluation
    from guard.models import set_threads
    from guard.store.database import Store

    set_threads(threads)
    ev = evaluate(
        policy,
        test_file,
        store=Store.open(db, create=True),
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        fmt=fmt,
        images=images,
        text=folder_text,
        task=task_type,
        with_baselines=baselines,
        shots=shot_list,
        heads=head_list,
        repeats=repeats,
        seed=seed,
        max_layers=depth_list,
        attacks=attacks,
        group_by=group_by,
        baseline=baseline,
        progress=True,
    )
    if plot:
        from guard.eval.plots import sweep_figure

        sweep_figure(ev, plot, plot_size)
    _write_errors(errors, ev.errors)
    if as_json:
        typer.echo(json.dumps(ev.to_dict()))
    else:
        print_evaluation(ev)
        if plot:
            typer.echo(f"wrote {plot}")
        if errors:
            typer.echo(f"wrote {len(ev.errors)} misjudged item(s) to {errors}")


def _eval_split(split: str | None, loso: bool, test_file: str | None) -> bool:
    """Is this a leave-one-source-out run? Refuses contradictions and a missing test file."""
    if split not in (None, "file", "loso"):
        _fail(f"--split must be file or loso (got '{split}')")
    if split == "file" and loso:
        _fail("--split file contradicts --leave-one-source-out")
    loso = loso or split == "loso"
    if loso and test_file:
        _fail("--leave-one-source-out evaluates the policy's own exemplars, source by source: give no test file")
    if not loso and not test_file:
        _fail("give a labelled test file, or --leave-one-source-out to hold out each source of exemplars in turn")
    return loso


def _write_errors(path: str | None, errors: list[dict]) -> None:
    if path:
        from guard.eval.sources import write_errors

        write_errors(path, errors)


def _eval_loso(policy, db, device, dtype, batch_size, group_by, baseline, errors, threads, as_json) -> None:
    from guard.eval.sources import DEFAULT_GROUP_BY, leave_one_source_out, print_source_evaluation
    from guard.models import set_threads
    from guard.store.database import Store

    set_threads(threads)
    ev = leave_one_source_out(
        policy,
        group_by=group_by or DEFAULT_GROUP_BY,
        store=Store.open(db, create=True),
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        baseline=baseline,
        progress=True,
    )
    _write_errors(errors, ev.errors)
    if as_json:
        typer.echo(json.dumps(ev.to_dict()))
        return
    print_source_evaluation(ev)
    if errors:
        typer.echo(f"wrote {len(ev.errors)} misjudged item(s) to {errors}")


@app.command("serve")
@friendly
def serve_command(
    db: DbOption = None,
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", "-p", help="Policy to serve; repeat for several [default: all, of one model]"),
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind [default: 127.0.0.1]")] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on")] = 8000,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Most inputs gathered for one model call (micro-batch)")
    ] = 32,
    forward_batch: Annotated[
        int,
        typer.Option(
            "--forward-batch",
            min=1,
            help="Inputs per forward pass: a gathered batch runs as length-sorted forwards of this many (GPU: raise it)",
        ),
    ] = 8,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, help="Longest wait for a batch to fill, in milliseconds")
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Inputs waiting at most; beyond, 503 with Retry-After")
    ] = 256,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds a request may take; then 504")] = 30.0,
    max_items: Annotated[int, typer.Option("--max-items", min=1, help="Inputs in one request")] = 64,
    max_chars: Annotated[int, typer.Option("--max-chars", min=1, help="Characters in one text")] = 20_000,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Tokens in one text")] = 2048,
    max_image_bytes: Annotated[int, typer.Option("--max-image-bytes", min=1, help="Bytes of one image")] = 5 * 2**20,
    max_image_pixels: Annotated[
        int, typer.Option("--max-image-pixels", min=1, help="Pixels (width x height) of one image")
    ] = 4096 * 4096,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Bytes of one request body")] = 8
    * 2**20,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key", help="Accepted API key; repeatable (GUARD_API_KEYS or --api-key-file keep keys out of ps)"
        ),
    ] = None,
    api_key_file: Annotated[
        str | None, typer.Option("--api-key-file", help="File of API keys, one a line [env GUARD_API_KEYS_FILE]")
    ] = None,
    audit: Annotated[bool, typer.Option("--audit", help="Record every verdict in the database's audit log")] = False,
    audit_text: Annotated[
        bool, typer.Option("--audit-text", help="Also record the input text (by default only its keyed hash)")
    ] = False,
    audit_secret: Annotated[
        str | None,
        typer.Option(
            "--audit-secret",
            help="File of the audit log's hashing secret, made 0600 if missing [default: beside an SQLite "
            "database; required for PostgreSQL] [env GUARD_AUDIT_SECRET_FILE]",
        ),
    ] = None,
    audit_retention_days: Annotated[
        float | None, typer.Option("--audit-retention-days", min=0, help="Delete audit rows older than this")
    ] = None,
    header_timeout: Annotated[
        float,
        typer.Option("--header-timeout", min=0.1, help="Seconds a request's headers may take to arrive; then 408"),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option("--body-timeout", min=0.1, help="Seconds a request body may take to arrive; then 408"),
    ] = 30.0,
    keep_alive: Annotated[
        float, typer.Option("--keep-alive", min=0.1, help="Seconds an idle keep-alive connection stays open")
    ] = 5.0,
    max_connections: Annotated[
        int, typer.Option("--max-connections", min=1, help="Open connections at most; beyond, 503 and closed")
    ] = 512,
    threads: ThreadsOption = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")] = "info",
    shutdown_timeout: Annotated[
        float, typer.Option("--shutdown-timeout", min=0, help="Seconds in-flight requests get to finish on SIGTERM")
    ] = 30.0,
):
    """Serve the compiled policies over HTTP: OpenAI's POST /v1/moderations and guard's POST /v1/check."""
    if (audit_text or audit_secret) and not audit:
        _fail("--audit-text and --audit-secret go with --audit")
    _quiet_transformers()
    from guard.serve.keys import load_keys
    from guard.serve.limits import Limits
    from guard.serve.main import serve
    from guard.serve.service import ServeConfig

    limits = Limits(
        max_body_bytes=max_body_bytes,
        max_items=max_items,
        max_chars=max_chars,
        max_tokens=max_tokens,
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        timeout_s=timeout,
    )
    config = ServeConfig(
        limits=limits,
        max_batch=max_batch,
        forward_batch=forward_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        keys=load_keys(api_key, api_key_file),
        audit=audit,
        audit_text=audit_text,
        audit_retention_days=audit_retention_days,
        audit_secret=audit_secret,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        keep_alive_s=keep_alive,
        max_connections=max_connections,
        threads=threads,
    )
    serve(
        db=db,
        policies=policy,
        host=host,
        port=port,
        device=device,
        dtype=dtype,
        config=config,
        log_level=log_level,
        shutdown_timeout=shutdown_timeout,
    )


@app.command("audit")
@friendly
def audit_command(
    db: DbOption = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only rows from then on: 30m, 12h, 7d, 2w or an ISO date/time")
    ] = None,
    policy: Annotated[str | None, typer.Option("--policy", "-p", help="Only this policy's rows")] = None,
    flagged: Annotated[
        bool | None, typer.Option("--flagged/--allowed", help="Only flagged (or only allowed) verdicts")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="The newest N rows [default: all with --json, else 50]")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Export as JSON lines, one row each")] = False,
    prune_days: Annotated[
        float | None, typer.Option("--prune-days", min=0, help="Delete rows older than this many days, then report")
    ] = None,
):
    """List or export the audit log that 'guard serve --audit' writes; prune it with --prune-days."""
    from datetime import datetime, timedelta, timezone

    from guard.store.audit import AuditLog, parse_since
    from guard.store.database import Store

    log = AuditLog(Store.open(db))
    if prune_days is not None:
        before = datetime.now(timezone.utc) - timedelta(days=prune_days)
        typer.echo(f"pruned {log.prune(before)} audit rows older than {before.isoformat(timespec='seconds')}")
        return
    start = parse_since(since) if since else None
    rows = log.query(since=start, policy=policy, flagged=flagged, limit=limit or (None if as_json else 50))
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.to_dict()))
        return
    from rich.console import Console
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
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
