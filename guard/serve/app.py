"""The HTTP routes of `guard serve` (FastAPI): OpenAI moderations, guard's own check, operations.

Every error is a JSON body `{"error": {"message", "type", "param", "code", "request_id"}}` with a
4xx status for the caller's mistakes and limits, 503/504 for capacity and time; no verdict is
ever implied by an error. Each response carries `X-Request-ID` (the caller's, if it sent a sane
one) and each request is logged as one JSON line with that id and the server's own id for it
(`server_request_id`, the audit log's `request_id`: a caller cannot choose it).

Bodies are JSON (`Content-Type: application/json`, else 415), read within `--body-timeout`
(else 408) and `--max-body-bytes`; a body too deep or with too large a number is a 400. With
API keys, the API docs (`/docs`, `/redoc`, `/openapi.json`) need a key as `/v1/*` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from guard.errors import first_line
from guard.serve.inputs import RequestItem, parse_conversation, parse_input
from guard.serve.limits import ApiError, LimitError, bad_request, check_body_size
from guard.serve.results import moderation_result
from guard.serve.service import Service

log = logging.getLogger("guard.serve")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ROUTES = {
    "/v1/moderations",
    "/v1/check",
    "/v1/check/stream",
    "/v1/policies",
    "/v1/models",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
}
JSON_TYPE = re.compile(r"application/([\w.+-]+\+)?json", re.I)  # application/json, application/x+json
RELOAD_NOTE = (
    "policies compiled (or rolled back) while the server runs are not picked up: restart it to serve their new versions"
)


def reload_note(seconds: float) -> str:
    return f"promoted (or rolled back) versions are served within {seconds:g} s (--reload-every)"


def create_app(service: Service, *, manage_service: bool = True) -> FastAPI:
    """The app over a Service; with `manage_service` the app's lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_service:
            service.start()
        # "ready" is logged by the model worker once its warm-up forward is done (Service._warm_up)
        log.info("started", extra={"policies": service.policy_names, "model": service.guards.model_reference})
        try:
            yield
        finally:
            if manage_service:  # in-flight requests are done (uvicorn waited); finish the queue and the audit log
                await asyncio.to_thread(service.stop)
            log.info("stopped")

    # the docs routes are guard's own (_add_docs), behind the keys when there are keys
    app = FastAPI(
        title="guard",
        summary="Content moderation with Sparse Attention Vectors",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    app.add_middleware(RequestContext, service=service)
    _add_error_handlers(app, service)
    _add_routes(app, service)
    _add_docs(app, service)
    if service.config.review:  # guard serve --review: the review page (issue 22)
        from guard.serve.review import add_review_routes

        add_review_routes(app, service)
    return app


def _add_docs(app: FastAPI, service: Service) -> None:
    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        authorize(request, service)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        authorize(request, service)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="guard: API docs")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        authorize(request, service)
        return get_redoc_html(openapi_url="/openapi.json", title="guard: API docs")


def _add_routes(app: FastAPI, service: Service) -> None:
    """The API's routes, declared over one service."""
    # long: each route is a few lines over the service; read together they are the API
    limits = service.config.limits

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        """OpenAI's moderation API: `{"model": POLICY (optional), "input": ..., "explain": false}`
        (`explain`, guard's own: each verdict under `guard` with its heads' votes and closest exemplars)."""
        api_key = authorize(request, service)
        body = await read_json(request, service)
        policies = service.resolve_policies(_optional_str(body, "model"))
        explain = _explain(body)
        items = await _items(body, limits)
        outcomes = await service.check(
            items, policies, explain=explain, deadline=request.state.started + limits.timeout_s
        )
        request_id = request.state.request_id
        await audit(request, "moderations", items, outcomes, api_key)
        labels = {name: service.moderator.artifacts[name].labels for name in policies}
        results = [
            moderation_result(o.verdicts, labels, item.input_types, single=len(policies) == 1, explain=explain)
            for item, o in zip(items, outcomes)
        ]
        return {"id": f"modr-{request_id}", "model": ",".join(policies), "results": results}

    @app.post("/v1/check")
    async def check(request: Request):
        """guard's verdicts: `{"input": ... or "messages": [...], "policies": [...] (optional), "explain": false}`;
        a text over max_chars is a document, checked window by window (up to max_document_chars)."""
        api_key = authorize(request, service)
        body = await read_json(request, service, limits.document_body_bytes)
        requested = body.get("policies", body.get("policy"))
        if requested is not None and not (
            isinstance(requested, str) or (isinstance(requested, list) and all(isinstance(p, str) for p in requested))
        ):
            raise bad_request("policies must be a policy name or a list of names", "policies")
        explain = _explain(body)
        policies = service.resolve_policies(requested, "policies")
        items = _conversation(body, limits) if "messages" in body else await _items(body, limits, documents=True)
        outcomes = await service.check(
            items, policies, explain=explain, deadline=request.state.started + limits.timeout_s
        )
        request_id = request.state.request_id
        await audit(request, "check", items, outcomes, api_key)
        return {
            "id": f"chk-{request_id}",
            "policies": list(policies),
            "results": [o.verdicts.to_dict() for o in outcomes],
        }

    @app.post("/v1/check/stream")
    async def check_stream(request: Request):
        """An answer checked as it is generated: NDJSON lines `{"text": chunk}` (guard.serve.stream)."""
        from guard.serve.stream import check_stream as answer

        return await answer(request, service, authorize(request, service))

    @app.get("/v1/policies")
    async def policies(request: Request):
        authorize(request, service)
        return {"policies": [_policy_summary(art) for art in service.moderator.artifacts.values()]}

    @app.get("/v1/models")
    async def models(request: Request):
        """The policies as OpenAI "models", for clients that list models first."""
        authorize(request, service)
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "guard"} for name in service.policy_names
            ],
        }

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        problems, stored = await run_in_threadpool(_readiness, service)
        served = {name: art.version for name, art in service.moderator.artifacts.items()}
        body = {
            "ready": not problems,
            "policies": service.policy_names,
            "versions": served,  # the version each policy is served at: the one loaded at start
            "queue_depth": service.batcher.depth,
            "worker": {"index": service.config.worker or 0, "pid": os.getpid()},
            "reload": RELOAD_NOTE if not service.config.reload_s else reload_note(service.config.reload_s),
        }
        newer = {name: v for name, v in stored.items() if name in served and v != served[name]}
        if newer:  # the database's current version differs: a restart would serve it
            body["database_versions"] = newer
        if problems:
            return JSONResponse({**body, "problems": problems}, status_code=503)
        return body

    async def audit(request: Request, endpoint: str, items, outcomes, api_key) -> None:
        state = request.state
        await service.record(
            state.server_request_id,
            endpoint,
            items,
            outcomes,
            api_key,
            client_request_id=state.client_request_id,
            deadline=state.started + limits.timeout_s,
        )

    @app.get("/metrics")
    async def metrics(request: Request):
        authorize(request, service)
        return Response(service.metrics.render(), media_type=service.metrics.content_type)


def _readiness(service: Service) -> tuple[list[str], dict[str, str]]:
    """What keeps the server from being ready, and each stored policy's current version."""
    problems, stored = [], {}
    if not service.batcher.alive:
        problems.append("the model worker is not running")
    elif service.warm_up_error is not None:
        problems.append(f"the warm-up forward failed ({service.warm_up_error})")
    elif not service.warm.is_set():
        problems.append("warming up: the model's first forward of every policy has not finished")
    if service.audit is not None and not service.audit.alive:
        problems.append("the audit writer is not running")
    if service.store is not None:
        try:
            stored = {summary.policy: summary.version for summary in service.store.summaries()}
        except Exception as exc:
            problems.append(f"the policy database cannot be read ({first_line(exc)})")
        else:
            missing = [name for name in service.policy_names if name not in stored]
            if missing:
                problems.append(f"policies no longer in the database: {', '.join(missing)}")
    return problems, stored


def _policy_summary(art) -> dict:
    return {
        "name": art.name,
        "version": art.version,
        "labels": [{"name": lab.name, "flagged": lab.flagged} for lab in art.labels],
        "model": art.model_reference,
        "model_fingerprint": art.model_fingerprint,
        "heads": len(art.heads),
        "calibrated": art.calibration is not None,
        "compiled": art.created_at,
    }


def _explain(body: dict) -> bool:
    explain = body.get("explain", False)
    if not isinstance(explain, bool):
        raise bad_request("explain must be true or false", "explain")
    return explain


def _optional_str(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{key} must be a string", key)
    return value


def _conversation(body: dict, limits) -> list[RequestItem]:
    if "input" in body:
        raise bad_request("give 'input' or 'messages', not both", "messages")
    return parse_conversation(body["messages"], limits)


async def _items(body: dict, limits, documents: bool = False) -> list[RequestItem]:
    """The request's inputs (`documents`: a text over max_chars is a document, /v1/check's)."""
    if "input" not in body:
        raise bad_request("the request needs an 'input'", "input", code="missing_input")
    value = body["input"]
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return await run_in_threadpool(parse_input, value, limits)  # decoding images: off the event loop
    if documents:  # a document's library checks (a scan of up to a million characters): off the event loop
        return await run_in_threadpool(parse_input, value, limits, documents)
    return parse_input(value, limits)


def authorize(request: Request, service: Service) -> str | None:
    """The caller's key id, or 401 if keys are set and the request has no valid one."""
    keys = service.config.keys
    if not keys:
        return None
    key_id = keys.check(request.headers.get("authorization"))
    if key_id is None:
        raise ApiError(
            401,
            "invalid_api_key",
            "a valid API key is required: send 'Authorization: Bearer KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key_id


async def read_json(request: Request, service: Service, most: int | None = None) -> dict:
    """The body as a JSON object, read no further than the body size limit (`most` bytes; by
    default max_body_bytes) and no longer than the body timeout (counted from the request's arrival)."""
    limits = service.config.limits
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if not JSON_TYPE.fullmatch(content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the request body must be JSON sent as Content-Type: application/json (not {content_type or 'none'!r})",
        )
    length = request.headers.get("content-length")
    if length and length.isdigit():
        check_body_size(int(length), limits, most)
    timeout = service.config.body_timeout_s
    try:
        body = await asyncio.wait_for(
            _read_body(request, limits, most), timeout=max(0.0, request.state.started + timeout - time.monotonic())
        )
    except asyncio.TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {timeout:g} s (the body timeout)",
            headers={"Connection": "close"},
        ) from None
    return parse_json(body)


async def _read_body(request: Request, limits, most: int | None) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        check_body_size(len(body), limits, most)
    return bytes(body)


def parse_json(body: bytes) -> dict:
    """A JSON object from the body, or a 400: invalid, too deeply nested, a number too long."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply", code="invalid_json") from None
    except ValueError:  # an integer beyond Python's digit limit (4300)
        raise bad_request("the request body holds a number too long to read", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return data


def _add_error_handlers(app: FastAPI, service: Service) -> None:
    def error_response(request: Request, error: ApiError) -> JSONResponse:
        service.metrics.errors.labels(error.code).inc()
        request_id = getattr(request.state, "request_id", None)
        return JSONResponse(error.body(request_id), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        if isinstance(exc, LimitError):
            log.info("limit", extra={"request_id": request.state.request_id, "limit": exc.limit})
        return error_response(request, exc)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect):
        # the client left mid-body: nothing reaches it; RequestContext logs it as 499, not a 500
        return Response(status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers))


class RequestContext:
    """Pure ASGI middleware: request id, the X-Request-ID header, one JSON log line and metrics per
    request, and a JSON 500 (logged with its traceback) for any error that escaped the routes."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service
        # which of --workers N answered (guard.serve.workers), on every response
        self.worker = {} if service.config.worker is None else {"x-guard-worker": str(service.config.worker)}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        server_request_id = uuid.uuid4().hex  # the audit log's id: never the caller's choice
        client_request_id = incoming if REQUEST_ID.fullmatch(incoming) else None
        request_id = client_request_id or server_request_id  # echoed in X-Request-ID and errors
        state = scope.setdefault("state", {})
        state.update(
            request_id=request_id,
            server_request_id=server_request_id,
            client_request_id=client_request_id,
            started=time.monotonic(),
        )
        started = time.perf_counter()
        status = {"code": 500, "sent": False, "gone": False}

        async def receive_watched():
            message = await receive()
            if message["type"] == "http.disconnect" and not status["sent"]:
                status["gone"] = True  # the client left before its answer
            return message

        async def send_with_id(message):
            if status["gone"]:
                status["code"] = 499  # nginx's "client closed request": nothing is sent
                return
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                MutableHeaders(scope=message).update({"x-request-id": request_id, **self.worker})
            await send(message)

        try:
            await self.app(scope, receive_watched, send_with_id)
        except Exception:
            if status["gone"]:  # an error from reading a body the client stopped sending: no fault here
                status["code"] = 499
            else:
                log.exception("internal error", extra={"request_id": request_id, "path": scope["path"]})
            if not status["sent"] and not status["gone"]:
                error = ApiError(500, "internal_error", "internal error; nothing was decided", kind="server_error")
                self.service.metrics.errors.labels(error.code).inc()
                await JSONResponse(error.body(request_id), status_code=500)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.service.metrics.requests.labels(route, str(status["code"])).inc()
            self.service.metrics.request_seconds.labels(route).observe(seconds)
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "server_request_id": server_request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status["code"],
                    "ms": round(seconds * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )
