"""A FastAPI app of your own that embeds guard as a library: comments are checked before they
are stored, and the check never blocks the event loop.

    uvicorn examples.embed_fastapi:app --port 8080        # GUARD_DB=guard.db GUARD_POLICY=text-harm
    curl -s localhost:8080/comments -H "Content-Type: application/json" -d '{"text": "nice post!"}'

guard's `MicroBatcher` runs every forward on one worker thread and gathers concurrent requests
into shared forward passes; the route only awaits a future. (Calling `guards.check` directly in
`run_in_threadpool` also works, one forward per request.) To serve guard's full HTTP API inside
your app instead, mount it: `app.mount("/moderation", guard.serve.app.create_app(Service(guards)))`.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from guard import GuardSet
from guard.serve.batcher import MicroBatcher, QueueFull

POLICY = os.environ.get("GUARD_POLICY")  # None: every policy in the database
state: dict = {}


def run_batch(texts: list[str]) -> list[dict]:
    """On the worker thread: one check_batch for every comment gathered."""
    return state["guards"].check_batch(texts, batch_size=len(texts))


@asynccontextmanager
async def lifespan(app: FastAPI):
    state["guards"] = GuardSet.load(os.environ.get("GUARD_DB", "guard.db"), [POLICY] if POLICY else None)
    state["batcher"] = MicroBatcher(run_batch, max_batch=32, max_wait_ms=5, max_queue=256).start()
    yield
    await asyncio.to_thread(state["batcher"].stop)  # finish what is queued


app = FastAPI(lifespan=lifespan)
comments: list[dict] = []


class Comment(BaseModel):
    text: str


@app.post("/comments", status_code=201)
async def post_comment(comment: Comment):
    if not comment.text.strip() or len(comment.text) > 5000:
        raise HTTPException(422, "a comment has 1 to 5000 characters")
    try:
        (future,) = state["batcher"].submit([comment.text])
    except QueueFull:
        raise HTTPException(503, "busy; try again", headers={"Retry-After": "1"}) from None
    verdicts = await asyncio.wait_for(asyncio.wrap_future(future), timeout=30)
    if any(v.flagged for v in verdicts.values()):
        reasons = {name: v.label for name, v in verdicts.items() if v.flagged}
        raise HTTPException(422, {"rejected": True, "reasons": reasons})
    comments.append({"text": comment.text})
    return {"accepted": True, "id": len(comments)}


@app.get("/comments")
async def list_comments():
    return comments
