"""`guard export`: a compiled policy's text path as an ONNX folder, for `guard check --engine onnx`."""

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
    db: options.Db = None,
    as_json: options.Json = False,
):
    """Export a compiled policy's text path to ONNX (graph, manifest, tokenizer) for 'guard check --engine onnx'."""
    quiet_transformers()
    from guard.onnx.export import export_onnx
    from guard.store.database import Store

    report = export_onnx(Store.open(db).load_artifacts(None if policy is None else [policy])[0], onnx_dir)
    if as_json:
        echo_json(report.to_dict())
        return
    typer.echo(
        f"exported '{report.policy}' to {report.directory}: {report.layers} decoder layers, "
        f"{report.onnx_bytes / 1e6:.1f} MB; onnxruntime vs torch on a sample, largest similarity gap "
        f"{report.max_similarity_error:.1e} [{report.seconds:.1f}s]"
    )
