"""`guard export`: a compiled policy's text path as an ONNX folder, for `--engine onnx` (check, scan, serve)."""

from __future__ import annotations

from typing import Annotated

import typer

from guard.cli import options
from guard.cli.output import echo_json
from guard.cli.root import command, quiet_transformers


@command("export")
def export_command(
    policy: Annotated[
        str | None, typer.Argument(help="Compiled policy name (optional if the database has one)")
    ] = None,
    onnx_dir: Annotated[str, typer.Option("--onnx", help="Write the ONNX export to this folder")] = ...,
    quantize: Annotated[
        str | None,
        typer.Option("--quantize", help="int8: int8 weights (smaller, faster on CPU; see docs/onnx.md for agreement)"),
    ] = None,
    db: options.Db = None,
    as_json: options.Json = False,
):
    """Export a compiled policy's text path to ONNX (graph, manifest, tokenizer, exemplars) for
    'guard check|scan|serve --engine onnx'."""
    from guard.onnx.format import weights_of

    weights_of(quantize)  # a bad value fails before the database and the model
    quiet_transformers()
    from guard.onnx.export import export_onnx
    from guard.store.database import Store

    artifact = Store.open(db).load_artifacts(None if policy is None else [policy])[0]
    report = export_onnx(artifact, onnx_dir, quantize=quantize)
    if as_json:
        echo_json(report.to_dict())
        return
    typer.echo(
        f"exported '{report.policy}' to {report.directory}: {report.layers} decoder layers, {report.weights} weights, "
        f"{report.onnx_bytes / 1e6:.1f} MB; onnxruntime vs torch on a sample, largest similarity gap "
        f"{report.max_similarity_error:.1e} [{report.seconds:.1f}s]"
    )
