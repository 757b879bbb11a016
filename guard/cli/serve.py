"""`guard serve`: the options of the HTTP service, mapped onto guard.serve's ServeConfig."""

from __future__ import annotations

from typing import Annotated

import typer

from guard.cli import options
from guard.cli.root import command, fail, quiet_transformers
from guard.limits import LIMITS as LIBRARY_LIMITS
from guard.serve.limits import DOCUMENT_CHARS

Policies = options.policies("Policy to serve; repeat for several [default: all, of one model]")
Host = Annotated[str | None, typer.Option("--host", help="Address to bind [default: 127.0.0.1]")]
Port = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on")]
MaxBatch = Annotated[
    int, typer.Option("--max-batch", min=1, help="Most inputs gathered for one model call (micro-batch)")
]
ForwardBatch = Annotated[
    int,
    typer.Option(
        "--forward-batch",
        min=1,
        help="Inputs per forward pass: a gathered batch runs as length-sorted forwards of this many (GPU: raise it)",
    ),
]
MaxWait = Annotated[
    float, typer.Option("--max-wait-ms", min=0, help="Longest wait for a batch to fill, in milliseconds")
]
MaxQueue = Annotated[
    int, typer.Option("--max-queue", min=1, help="Inputs waiting at most; beyond, 503 with Retry-After")
]
Timeout = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds a request may take; then 504")]
MaxItems = Annotated[int, typer.Option("--max-items", min=1, help="Inputs in one request")]
MaxChars = Annotated[int, typer.Option("--max-chars", min=1, help="Characters in one text")]
MaxDocumentChars = Annotated[
    int,
    typer.Option(
        "--max-document-chars",
        min=1,
        help="Characters in one document: /v1/check checks a text over --max-chars window by window, up to this "
        "[default: GUARD_MAX_DOCUMENT_CHARS, at most 1,000,000]",
        show_default=False,
    ),
]
MaxTokens = Annotated[int, typer.Option("--max-tokens", min=1, help="Tokens in one text")]
MaxImageBytes = Annotated[int, typer.Option("--max-image-bytes", min=1, help="Bytes of one image")]
MaxImagePixels = Annotated[int, typer.Option("--max-image-pixels", min=1, help="Pixels (width x height) of one image")]
MaxBodyBytes = Annotated[int, typer.Option("--max-body-bytes", min=1, help="Bytes of one request body")]
ApiKey = Annotated[
    list[str] | None,
    typer.Option(
        "--api-key", help="Accepted API key; repeatable (GUARD_API_KEYS or --api-key-file keep keys out of ps)"
    ),
]
ApiKeyFile = Annotated[
    str | None, typer.Option("--api-key-file", help="File of API keys, one a line [env GUARD_API_KEYS_FILE]")
]
Audit = Annotated[bool, typer.Option("--audit", help="Record every verdict in the database's audit log")]
AuditText = Annotated[
    bool, typer.Option("--audit-text", help="Also record the input text (by default only its keyed hash)")
]
AuditSecret = Annotated[
    str | None,
    typer.Option(
        "--audit-secret",
        help="File of the audit log's hashing secret, made 0600 if missing [default: beside an SQLite "
        "database; required for PostgreSQL] [env GUARD_AUDIT_SECRET_FILE]",
    ),
]
AuditRetention = Annotated[
    float | None, typer.Option("--audit-retention-days", min=0, help="Delete audit rows older than this")
]
HeaderTimeout = Annotated[
    float,
    typer.Option("--header-timeout", min=0.1, help="Seconds a request's headers may take to arrive; then 408"),
]
BodyTimeout = Annotated[
    float,
    typer.Option("--body-timeout", min=0.1, help="Seconds a request body may take to arrive; then 408"),
]
KeepAlive = Annotated[
    float, typer.Option("--keep-alive", min=0.1, help="Seconds an idle keep-alive connection stays open")
]
MaxConnections = Annotated[
    int, typer.Option("--max-connections", min=1, help="Open connections at most; beyond, 503 and closed")
]
Workers = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="Model processes behind the port, each with its own model, sharing the database and audit log",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="torch threads per model worker [env GUARD_THREADS, default: (cores - 1) / --workers, at least 1]",
    ),
]
Review = Annotated[
    bool,
    typer.Option(
        "--review",
        help="Serve the review page /review (needs --audit --audit-text and a review: or admin: key; docs/review.md)",
    ),
]
ReviewSample = Annotated[
    float,
    typer.Option(
        "--review-sample",
        min=0,
        max=1,
        help="Share of confident verdicts the review queue shows after the uncertain ones (every label alike)",
    ),
]
ReloadEvery = Annotated[
    float | None,
    typer.Option(
        "--reload-every",
        min=0,
        help="Seconds between checks for a newly promoted version, served without a restart "
        "(0: never) [default: 2 with --review, else 0]",
    ),
]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")]
ShutdownTimeout = Annotated[
    float, typer.Option("--shutdown-timeout", min=0, help="Seconds in-flight requests get to finish on SIGTERM")
]

# option -> field of guard.serve.limits.ServiceLimits, and of guard.serve.service.ServeConfig
LIMITS = {
    "max_body_bytes": "max_body_bytes",
    "max_items": "max_items",
    "max_chars": "max_chars",
    "max_document_chars": "max_document_chars",
    "max_tokens": "max_tokens",
    "max_image_bytes": "max_image_bytes",
    "max_image_pixels": "max_image_pixels",
    "timeout": "timeout_s",
}
CONFIG = {
    "max_batch": "max_batch",
    "forward_batch": "forward_batch",
    "max_wait_ms": "max_wait_ms",
    "max_queue": "max_queue",
    "audit": "audit",
    "audit_text": "audit_text",
    "audit_retention_days": "audit_retention_days",
    "audit_secret": "audit_secret",
    "header_timeout": "header_timeout_s",
    "body_timeout": "body_timeout_s",
    "keep_alive": "keep_alive_s",
    "max_connections": "max_connections",
    "threads": "threads",
    "workers": "workers",
    "review": "review",
    "review_sample": "review_sample",
}


@command("serve")
def serve_command(
    ctx: typer.Context,
    db: options.Db = None,
    policy: Policies = None,
    host: Host = None,
    port: Port = 8000,
    device: options.Device = "auto",
    dtype: options.Dtype = None,
    max_batch: MaxBatch = 32,
    forward_batch: ForwardBatch = 8,
    max_wait_ms: MaxWait = 5.0,
    max_queue: MaxQueue = 256,
    timeout: Timeout = 30.0,
    max_items: MaxItems = 64,
    max_chars: MaxChars = 20_000,
    max_document_chars: MaxDocumentChars = DOCUMENT_CHARS,
    max_tokens: MaxTokens = 2048,
    max_image_bytes: MaxImageBytes = 5 * 2**20,
    max_image_pixels: MaxImagePixels = 4096 * 4096,
    max_body_bytes: MaxBodyBytes = 8 * 2**20,
    api_key: ApiKey = None,
    api_key_file: ApiKeyFile = None,
    audit: Audit = False,
    audit_text: AuditText = False,
    audit_secret: AuditSecret = None,
    audit_retention_days: AuditRetention = None,
    header_timeout: HeaderTimeout = 10.0,
    body_timeout: BodyTimeout = 30.0,
    keep_alive: KeepAlive = 5.0,
    max_connections: MaxConnections = 512,
    threads: Threads = None,
    workers: Workers = 1,
    log_level: LogLevel = "info",
    shutdown_timeout: ShutdownTimeout = 30.0,
    engine: options.EngineName = None,
    onnx_dir: options.OnnxDir = None,
    review: Review = False,
    review_sample: ReviewSample = 0.05,
    reload_every: ReloadEvery = None,
):
    """Serve the compiled policies over HTTP: OpenAI's POST /v1/moderations and guard's POST /v1/check."""
    # long: one parameter per option (36 of them); the body builds the settings and starts one or N processes
    if (audit_text or audit_secret) and not audit:
        fail("--audit-text and --audit-secret go with --audit")
    quiet_transformers()
    from guard.serve.keys import load_keys
    from guard.serve.main import LOOPBACK, ServeSettings, serve

    keys = load_keys(api_key, api_key_file)
    if review:
        check_review_options(audit_text, keys)
    config = serve_config(ctx.params, keys)
    config.reload_s = reload_every if reload_every is not None else (2.0 if review else 0.0)

    settings = ServeSettings(
        db=db,
        policies=policy,
        host=host or LOOPBACK,
        port=port,
        device=device,
        dtype=dtype,
        config=config,
        log_level=log_level,
        shutdown_timeout=shutdown_timeout,
        engine=engine,
        onnx_dir=onnx_dir,
    )
    if workers == 1:
        serve(settings)
    else:
        from guard.serve.workers import run_workers

        run_workers(settings, workers)


def check_review_options(audit_text: bool, keys) -> None:
    """--review shows audited texts to review keys: it needs the texts and such a key."""
    if not audit_text:
        fail("--review needs --audit --audit-text: the review page shows the audited texts")
    if not keys.roles() & {"review", "admin"}:
        fail("--review needs a review or admin key: give one as review:KEY or admin:KEY (docs/review.md)")


def serve_config(params: dict, keys):
    """The service's settings from the command's options (`params`, by parameter name)."""
    from guard.serve.limits import ServiceLimits
    from guard.serve.service import ServeConfig

    if params["max_document_chars"] > LIBRARY_LIMITS.max_document_chars:
        fail(
            f"--max-document-chars {params['max_document_chars']:,} is over the library's limit "
            f"({LIBRARY_LIMITS.max_document_chars:,}, GUARD_MAX_DOCUMENT_CHARS): raise that too"
        )
    limits = ServiceLimits(**{field: params[option] for option, field in LIMITS.items()})
    settings = {field: params[option] for option, field in CONFIG.items()}
    return ServeConfig(limits=limits, keys=keys, **settings)
