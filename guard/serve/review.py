"""`guard serve --review`: the review page `/review`, its login, and its JSON API.

Who may: a key of role `review` or `admin` (guard.serve.keys), given as `Authorization: Bearer
KEY` (scripts, the JSON API) or typed once into the login form, which sets an HttpOnly,
SameSite=Strict cookie holding a session signed with the audit secret (not the key). A check
key gets 403. Forms posted with the cookie carry a CSRF token bound to the session; bearer
requests need none (a browser never adds that header on its own). Every action is stored by
guard.store.reviews (reviews, staff_actions); the audit rows are only read. `/review/versions`
(admin keys only) lists each policy's candidate versions with `guard review diff`'s summary on
the server's own model, and promotes one with a CSRF-protected form.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from guard.errors import GuardError
from guard.eval.review_stats import BUCKETS, stats, to_csv
from guard.serve.keys import allows
from guard.serve.limits import ApiError, bad_request
from guard.serve.review_page import login_page, queue_page, stats_page, versions_page
from guard.store.audit import parse_since
from guard.store.reviews import Reviews

COOKIE = "guard_review"
SESSION_S = 12 * 3600  # a login lasts this long
MAX_FORM_BYTES = 16 * 1024
FILTERS = ("policy", "label", "since")


@dataclass
class Identity:
    key_id: str
    role: str
    session: str | None = None  # the cookie's value, when the request came with it (then CSRF applies)


class Sessions:
    """Signed login sessions and their CSRF tokens, under the audit secret."""

    def __init__(self, keys, secret: bytes):
        self.keys = keys
        self.secret = secret

    def _mac(self, what: bytes) -> str:
        return hmac.new(self.secret, what, hashlib.sha256).hexdigest()

    def make(self, key_id: str, role: str, now: float | None = None) -> str:
        payload = f"{key_id}|{role}|{int((now or time.time()) + SESSION_S)}"
        mac = self._mac(b"review-session\0" + payload.encode())
        return f"{payload}|{mac}"

    def read(self, value: str | None, now: float | None = None) -> Identity | None:
        """The identity a cookie holds, if its signature holds, it has not expired and its key
        still has that role (a key removed from the server ends its sessions at restart)."""
        if not value or value.count("|") != 3:
            return None
        payload, _, mac = value.rpartition("|")
        if not hmac.compare_digest(mac, self._mac(b"review-session\0" + payload.encode())):
            return None
        key_id, role, expires = payload.split("|")
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        if self.keys.id_roles().get(key_id) != role:
            return None
        return Identity(key_id, role, value)

    def csrf(self, session: str) -> str:
        return self._mac(b"csrf\0" + session.encode())[:32]


def add_review_routes(app: FastAPI, service) -> None:
    """The review page and its API over a service that has an audit log and review keys."""
    # long: each route is a few lines over Reviews; read together they are the page's API
    reviews = Reviews(service.store)
    sessions = Sessions(service.config.keys, service.audit_key.secret)

    def who(request: Request, needed: str = "review", *, page: bool = False) -> Identity:
        header = request.headers.get("authorization")
        if header:
            found = service.config.keys.identify(header)
            identity = None if found is None else Identity(*found)
        else:
            identity = sessions.read(request.cookies.get(COOKIE))
        if identity is None:
            if page:
                raise _ToLogin()
            raise ApiError(401, "invalid_api_key", "a review key is required", headers={"WWW-Authenticate": "Bearer"})
        if not allows(identity.role, needed):
            raise ApiError(403, "forbidden", f"this key's role ({identity.role}) may not do this (needs {needed})")
        return identity

    def labels() -> dict[str, list[str]]:
        return {name: [lab.name for lab in art.labels] for name, art in service.moderator.artifacts.items()}

    @app.exception_handler(_ToLogin)
    async def to_login(request: Request, exc: _ToLogin):
        return RedirectResponse("/review/login", status_code=303)

    @app.get("/review/login", include_in_schema=False)
    async def login_form(request: Request):
        return _html(lambda nonce: login_page(nonce))

    @app.post("/review/login", include_in_schema=False)
    async def login(request: Request):
        form = await _form(request)
        found = service.config.keys.identify_key(form.get("key", ""))
        if found is None or not allows(found[1], "review"):
            why = "that key is not a review or admin key" if found else "unknown key"
            return _html(lambda nonce: login_page(nonce, why), status=403 if found else 401)
        session = sessions.make(*found)
        await run_in_threadpool(reviews.log, found[0], found[1], "login")
        response = RedirectResponse("/review", status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(
            COOKIE, session, max_age=SESSION_S, path="/review", httponly=True, samesite="strict", secure=secure
        )
        return response

    @app.post("/review/logout", include_in_schema=False)
    async def logout(request: Request):
        identity = who(request, page=True)
        _check_csrf(sessions, identity, await _form(request))
        response = RedirectResponse("/review/login", status_code=303)
        response.delete_cookie(COOKIE, path="/review")
        return response

    @app.get("/review", include_in_schema=False)
    async def queue(request: Request):
        identity = who(request, page=True)
        filters = {name: request.query_params.get(name) or None for name in FILTERS}
        items = await run_in_threadpool(_queue, reviews, identity, filters, service.config.review_sample)
        csrf = sessions.csrf(identity.session) if identity.session else ""
        return _html(
            lambda nonce: queue_page(
                items, labels(), csrf=csrf, filters=filters, reviewer=identity.key_id, role=identity.role, nonce=nonce
            )
        )

    @app.post("/review/items/{audit_id}", include_in_schema=False)
    async def act_by_form(request: Request, audit_id: int):
        identity = who(request, page=True)
        form = await _form(request)
        _check_csrf(sessions, identity, form)
        action, _, label = form.get("action", "").partition(":")
        await _act(reviews, identity, audit_id, action, label or None, form.get("note"), labels())
        back = parse_qs(form.get("back", ""))
        query = urlencode({k: back[k][0] for k in FILTERS if back.get(k)})
        return RedirectResponse("/review" + (f"?{query}" if query else ""), status_code=303)

    @app.get("/review/api/queue")
    async def queue_json(request: Request):
        identity = who(request)
        filters = {name: request.query_params.get(name) or None for name in FILTERS}
        items = await run_in_threadpool(_queue, reviews, identity, filters, service.config.review_sample)
        return {"items": [item.to_dict() for item in items]}

    @app.post("/review/api/items/{audit_id}")
    async def act_by_json(request: Request, audit_id: int):
        identity = who(request)
        body = await _json(request)
        if identity.session:  # a cookie-borne call: the token as a header
            _check_csrf(sessions, identity, {"csrf": request.headers.get("x-csrf-token", "")})
        review = await _act(
            reviews, identity, audit_id, str(body.get("action", "")), body.get("label"), body.get("note"), labels()
        )
        return review.to_dict()

    def figures(request: Request) -> tuple[str, list[dict]]:
        bucket = request.query_params.get("bucket") or "day"
        if bucket not in BUCKETS:
            raise bad_request(f"bucket must be one of {', '.join(BUCKETS)}", "bucket")
        return bucket, stats(service.store, bucket=bucket, sample_rate=service.config.review_sample)

    @app.get("/review/stats", include_in_schema=False)
    async def stats_html(request: Request):
        who(request, page=True)
        bucket, rows = await run_in_threadpool(figures, request)
        return _html(lambda nonce: stats_page(rows, nonce, bucket))

    @app.get("/review/api/stats")
    async def stats_json(request: Request):
        who(request)
        return {"policies": (await run_in_threadpool(figures, request))[1]}

    @app.get("/review/api/stats.csv")
    async def stats_csv(request: Request):
        who(request)
        text = to_csv((await run_in_threadpool(figures, request))[1])
        return Response(text, media_type="text/csv; charset=utf-8", headers={"Content-Disposition": "inline"})

    def candidates() -> list[dict]:
        """Each served policy's current revision and its candidates (newer revisions), each with
        `guard review diff`'s summary on the server's own model (the torch engine only)."""
        from guard.eval.review_diff import review_diff

        loaded = getattr(service.guards, "loaded", None)
        out = []
        for name in sorted(service.moderator.artifacts):
            versions = service.store.versions(name)
            current = next(v for v in versions if v["current"])
            found = []
            for summary in (v for v in versions if v["revision"] > current["revision"]):
                entry = {"summary": summary, "diff": None, "error": None}
                if loaded is None:
                    entry["error"] = "no diff: this server runs an ONNX export (use 'guard review diff')"
                else:
                    try:
                        diff = review_diff(service.store, name, str(summary["revision"]), loaded=loaded)
                        entry["diff"] = diff.to_dict()
                    except GuardError as exc:
                        entry["error"] = f"no diff: {exc}"
                found.append(entry)
            out.append({"policy": name, "current": current, "candidates": found})
        return out

    @app.get("/review/versions", include_in_schema=False)
    async def versions(request: Request):
        identity = who(request, "admin", page=True)
        policies = await run_in_threadpool(candidates)
        csrf = sessions.csrf(identity.session) if identity.session else ""
        return _html(lambda nonce: versions_page(policies, csrf=csrf, nonce=nonce))

    @app.post("/review/versions/promote", include_in_schema=False)
    async def promote_by_form(request: Request):
        identity = who(request, "admin", page=True)
        form = await _form(request)
        _check_csrf(sessions, identity, form)
        name, version = str(form.get("policy", "")), str(form.get("version", ""))
        try:
            await run_in_threadpool(service.store.rollback, name, version)
        except GuardError as exc:
            raise bad_request(str(exc), "version") from None
        await run_in_threadpool(
            reviews.log, identity.key_id, identity.role, "promote", policy=name, version=version, via="page"
        )
        return RedirectResponse("/review/versions", status_code=303)

    @app.post("/review/api/promote")
    async def promote(request: Request):
        identity = who(request, "admin")
        body = await _json(request)
        if identity.session:
            _check_csrf(sessions, identity, {"csrf": request.headers.get("x-csrf-token", "")})
        name, version = str(body.get("policy", "")), str(body.get("version", ""))
        try:
            summary = await run_in_threadpool(service.store.rollback, name, version)
        except GuardError as exc:
            raise bad_request(str(exc), "version") from None
        await run_in_threadpool(reviews.log, identity.key_id, identity.role, "promote", policy=name, version=version)
        return {"policy": name, "revision": summary["revision"], "version": summary["version"]}


class _ToLogin(Exception):
    """A page request without a session: answered with a redirect to the login form."""


def _html(render, status: int = 200) -> HTMLResponse:
    """A page with its CSP nonce: only its own inline script and style run, nothing is fetched."""
    nonce = secrets.token_urlsafe(16)
    headers = {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    return HTMLResponse(render(nonce), status_code=status, headers=headers)


def _queue(reviews: Reviews, identity: Identity, filters: dict, sample: float) -> list:
    try:
        since = parse_since(filters["since"]) if filters.get("since") else None
    except GuardError as exc:
        raise bad_request(str(exc), "since") from None
    return reviews.queue(
        reviewer=identity.key_id,
        policy=filters.get("policy"),
        label=filters.get("label"),
        since=since,
        sample_rate=sample,
    )


async def _act(reviews: Reviews, identity: Identity, audit_id: int, action, label, note, labels: dict):
    """Record one action; the policy's labels are the served version's."""
    item = await run_in_threadpool(reviews.item, audit_id)
    if item is None:
        raise ApiError(404, "not_found", f"no audit row {audit_id}")
    if not isinstance(note, (str, type(None))) or not isinstance(label, (str, type(None))):
        raise bad_request("label and note must be strings")
    try:
        return await run_in_threadpool(
            lambda: reviews.add(
                audit_id,
                reviewer=identity.key_id,
                role=identity.role,
                action=action,
                labels=labels.get(item["policy"], []),
                label=label,
                note=note,
            )
        )
    except GuardError as exc:
        raise bad_request(str(exc), "action") from None


def _check_csrf(sessions: Sessions, identity: Identity, form: dict) -> None:
    if identity.session is None:
        return  # a bearer request: no ambient credential, nothing to forge
    if not hmac.compare_digest(str(form.get("csrf", "")), sessions.csrf(identity.session)):
        raise ApiError(403, "csrf", "the form's CSRF token is missing or wrong: reload the page")


async def _read(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ApiError(413, "max_body_bytes", f"a review request holds at most {MAX_FORM_BYTES} bytes")
    return bytes(body)


async def _form(request: Request) -> dict:
    """A urlencoded form's fields (the first value of each)."""
    try:
        fields = parse_qs((await _read(request)).decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise bad_request("the form is not valid") from None
    return {name: values[0] for name, values in fields.items()}


async def _json(request: Request) -> dict:
    try:
        body = json.loads(await _read(request))
    except (ValueError, RecursionError):
        raise bad_request("the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return body
