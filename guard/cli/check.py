"""`guard check`: texts, images or stdin's lines through guard.scanning.lines, on either engine;
each outcome printed as it comes. Exit 0 all allowed, 1 any flagged, 2 any input error."""

from __future__ import annotations

from typing import Annotated

import typer

from guard.cli import options
from guard.cli.output import flush, show_line_error, show_result, warn
from guard.cli.root import command, quiet_transformers
from guard.errors import GuardError

Inputs = Annotated[list[str] | None, typer.Argument(help="Image files, or '-' to read one text per line from stdin")]
Text = Annotated[str | None, typer.Option("--text", "-t", help="Text to check")]
File = Annotated[
    str | None,
    typer.Option("--file", help="A text file to check whole (a document longer than one check: window by window)"),
]
Prompt = Annotated[
    str | None,
    typer.Option("--prompt", help="Text that goes with each image (fills the policy prompt's {text})"),
]
Fields = Annotated[
    list[str] | None,
    typer.Option(
        "--field",
        "-f",
        help="NAME=VALUE for the policy prompt's {NAME}; repeat for each (e.g. prompt=... and response=...): one input",
    ),
]
Messages = Annotated[
    str | None,
    typer.Option(
        "--messages",
        "-m",
        help="A conversation to check: a JSON file holding an OpenAI-style message list (or {\"messages\": [...]}), or '-' for stdin",
    ),
]
Policies = options.policies(
    "Compiled policy name, or NAME@REVISION / NAME@VERSION for an older one; repeat for several"
)


@command("check")
def check_command(
    inputs: Inputs = None,
    text: Text = None,
    file: File = None,
    field: Fields = None,
    prompt: Prompt = None,
    messages: Messages = None,
    db: options.Db = None,
    policy: Policies = None,
    device: options.Device = "auto",
    dtype: options.Dtype = None,
    batch_size: options.Batch = 16,
    threads: options.Threads = None,
    as_json: options.Json = False,
    explain: options.Explain = False,
    engine: options.EngineName = None,
    onnx_dir: options.OnnxDir = None,
):
    """Check texts, conversations or images against compiled policies. Exit 0 if all allowed, 1 if any flagged, 2 if any input error."""
    from guard.scanning.lines import Engine, Request, check_lines

    images = [item for item in inputs or [] if item != "-"]
    request = Request(
        text=text,
        images=images,
        prompt=prompt,
        stdin="-" in (inputs or []),
        fields=named(field),
        messages=messages,
        file=file,
    )
    chosen = Engine(db, policy, engine, onnx_dir, device, dtype, batch_size, threads, explain, quiet_transformers, warn)
    flagged = errors = 0
    for outcomes in check_lines(request, chosen):
        for outcome in outcomes:
            if outcome.error is not None:
                errors += 1
                show_line_error(outcome.origin["line"], outcome.error, as_json)
            else:
                flagged += outcome.result.flagged
                show_result(outcome.origin, outcome.name, outcome.result, as_json, explain)
        flush()
    raise typer.Exit(2 if errors else 1 if flagged else 0)


def named(values: list[str] | None) -> dict[str, str]:
    """--field NAME=VALUE options as {NAME: VALUE}; a bad one is a usage error."""
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name.isidentifier():
            raise GuardError(f"--field '{value}' is not NAME=VALUE (NAME a plain name like prompt)")
        if name == "text":
            raise GuardError("--field text=...: give the text with --text")
        out[name] = rest
    return out
