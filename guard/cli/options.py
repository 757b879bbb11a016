"""The options several commands take, declared once: the database, the model's device, dtype,
batch size and threads, the engine (--engine, --onnx), the policy selection, --json, --explain, --data-root. A command names
them as parameter types; where commands word an option's help differently, a factory takes it."""

from __future__ import annotations

from typing import Annotated

import typer

Db = Annotated[
    str | None, typer.Option("--db", help="Database path or SQLAlchemy URL [env GUARD_DB, default ./guard.db]")
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto")]
Dtype = Annotated[
    str | None,
    typer.Option("--dtype", help="float32, bfloat16 or float16 [default: float32 on CPU, bfloat16 on GPU]"),
]
Batch = Annotated[int, typer.Option("--batch-size", min=1, help="Inputs per forward pass")]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="torch intra-op threads per forward [env GUARD_THREADS, default: torch's, one per core]",
    ),
]
# One meaning in every command that explains (check, scan): each selected head's vote, and the
# exemplars closest to the input at the top heads (guard.check.explain.explain).
Explain = Annotated[bool, typer.Option("--explain", help="Show each selected head's vote and the closest exemplars")]
# check, scan and serve: the torch model, or an ONNX export (guard.onnx.choice says which)
EngineName = Annotated[
    str | None,
    typer.Option("--engine", help="torch (the compiled policy on its model) or onnx (an export, see --onnx)"),
]
OnnxDir = Annotated[
    str | None, typer.Option("--onnx", help="Folder written by 'guard export NAME --onnx DIR' (text only)")
]
DataRoot = Annotated[
    str | None,
    typer.Option("--data-root", help="Folder holding the datasets a policy's 'data_root:' names [env GUARD_DATA_ROOT]"),
]


def policies(help: str):
    """-p/--policy, repeatable: the compiled policies a command loads."""
    return Annotated[list[str] | None, typer.Option("--policy", "-p", help=help)]


def as_json(help: str):
    """--json where it says more than "machine-readable"."""
    return Annotated[bool, typer.Option("--json", help=help)]


def plot_size(default: str):
    return Annotated[str | None, typer.Option("--size", help=f"Plot size in pixels, WIDTHxHEIGHT [default {default}]")]
