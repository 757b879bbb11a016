"""`guard scan`: a corpus in, a results file out, through guard.scanning.run."""

from __future__ import annotations

from typing import Annotated

import typer

from guard.cli import options
from guard.cli.output import echo_json
from guard.cli.root import command, quiet_transformers

Inputs = Annotated[
    list[str],
    typer.Argument(help="JSONL, CSV, Parquet, text (one item per line), a folder of images, or '-' (stdin)"),
]
Out = Annotated[str, typer.Option("--out", "-o", help="Results file: .jsonl or .parquet")]
Policies = options.policies("Compiled policy name; repeat for several (one forward per shared prompt)")
IdField = Annotated[
    str | None, typer.Option("--id-field", help="Column holding each item's id [default: the line or row number]")
]
TextField = Annotated[str, typer.Option("--text-field", help="Column holding the text to check")]
ImageField = Annotated[
    str | None, typer.Option("--image-field", help="Column naming an image file (a manifest of images)")
]
Images = Annotated[
    str | None, typer.Option("--images", help="Folder --image-field paths start from [default: the manifest's]")
]
DataRoot = Annotated[
    str | None,
    typer.Option(
        "--data-root",
        help="Folder --image-field paths must stay inside (absolute and ../ paths leading out are refused) "
        "[default: the --images folder, else the manifest's]",
    ),
]
Prompt = Annotated[str | None, typer.Option("--prompt", help="Text that goes with each image (fills {text})")]
Format = Annotated[
    str | None,
    typer.Option("--format", help="Input format if the extension does not say: jsonl, csv, parquet, text, images"),
]
Window = Annotated[
    int | None, typer.Option("--window", min=1, help="Items read and length-bucketed together [default: 8 batches]")
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted scan into the same --out")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")]
JsonSummary = options.as_json("Print the summary as JSON")
Ray = Annotated[bool, typer.Option("--ray", help="Run on Ray Data (pip install 'guard-sav[ray]')")]
RayAddress = Annotated[
    str | None, typer.Option("--ray-address", help="An existing Ray cluster [default: start Ray locally]")
]
Workers = Annotated[int, typer.Option("--workers", min=1, help="--ray: model actors (each loads the model once)")]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="--ray: show Ray's own logs and progress bars [default: errors only]")
]


@command("scan")
def scan_command(
    inputs: Inputs,
    out: Out,
    db: options.Db = None,
    policy: Policies = None,
    id_field: IdField = None,
    text_field: TextField = "text",
    image_field: ImageField = None,
    images: Images = None,
    data_root: DataRoot = None,
    prompt: Prompt = None,
    fmt: Format = None,
    batch_size: options.Batch = 16,
    window: Window = None,
    explain: options.Explain = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    as_json: JsonSummary = False,
    device: options.Device = "auto",
    dtype: options.Dtype = None,
    threads: options.Threads = None,
    ray: Ray = False,
    ray_address: RayAddress = None,
    workers: Workers = 1,
    engine: options.EngineName = None,
    onnx_dir: options.OnnxDir = None,
    verbose: Verbose = False,
):
    """Check a whole corpus: streamed, one record per item in input order, resumable.
    Exit 0 nothing flagged, 1 something flagged, 2 the scan failed."""
    from guard.scanning.readers import Columns
    from guard.scanning.run import RaySettings, ScanInterrupted, run

    columns = Columns(id_field, text_field, image_field, prompt=prompt, images=images, data_root=data_root)
    settings = dict(db=db, policies=policy, columns=columns, fmt=fmt, batch_size=batch_size, window=window)
    settings.update(explain=explain, resume=resume, overwrite=overwrite, progress=not quiet, device=device)
    quiet_transformers()
    try:
        report = run(
            inputs,
            out,
            **settings,
            dtype=dtype,
            threads=threads,
            ray=RaySettings(ray_address, workers, verbose) if ray else None,
            engine=engine,
            onnx_dir=onnx_dir,
        )
    except ScanInterrupted as stop:
        typer.echo(f"guard: {stop}", err=True)
        raise typer.Exit(130) from None
    echo_json(report.to_dict()) if as_json else print_report(report)
    raise typer.Exit(1 if report.summary.flagged else 0)


def print_report(report) -> None:
    summary, resumed = report.summary, report.resumed
    typer.echo(
        f"scanned {summary.items} items into {report.out}: {summary.checked} checked, {summary.flagged} flagged, "
        f"{summary.errors} errors ({report.new} now at {report.rate:.1f} items/s{f', {resumed} before' if resumed else ''})"
    )
    for name, labels in summary.labels.items():
        typer.echo(f"  {name}: " + ", ".join(f"{label} {n}" for label, n in labels.items()))
