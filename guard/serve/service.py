"""The moderation service behind the routes: policies, the model worker, limits, audit, metrics.

`Moderator.run_batch` is the only code that touches the model, always on the batcher's one
worker thread; `Service.check` is what the (async) routes await. It never blocks the event loop:
it prepares the inputs in a thread (each rendered and tokenised once, guard.check.prepared),
queues them and awaits their futures. Both call the Engine protocol (guard.check.protocol) only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from guard.check.engine import CheckResult
from guard.check.explain import nearest_exemplars
from guard.check.prepared import Prepared
from guard.check.protocol import Engine
from guard.errors import GuardError, first_line
from guard.limits import check_document_fields
from guard.models.batching import TOKEN_BUDGET
from guard.serve.audit import AuditFailed, AuditWriter
from guard.serve.batcher import BatcherStopped, MicroBatcher, QueueFull
from guard.serve.inputs import RequestItem
from guard.serve.keys import ApiKeys
from guard.serve.limits import ApiError, ServiceLimits, bad_request, check_tokens
from guard.serve.metrics import Metrics
from guard.store.audit import AuditKey, AuditLog, AuditRecord, now_iso

log = logging.getLogger("guard.serve")

# model names OpenAI clients send by default: they mean "this server's policies"
OPENAI_MODELS = ("omni-moderation-", "text-moderation-")
WARM_UP_TEXT = "Is this a warm-up?"
# what an audit row keeps for the review page (--review): the nearest exemplars at the top heads
REVIEW_HEADS = 3
REVIEW_NEIGHBOURS = 3


@dataclass
class ServeConfig:
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    max_batch: int = 32  # most inputs the worker gathers for one model call
    # inputs per forward pass: a gathered batch is sorted by length and split into forwards of at
    # most this many, so short texts are not padded to the longest (on 2 CPU cores, 16 texts as two
    # forwards of 8 cost 0.75 of one forward of 16: BENCHMARKS.md); a GPU wants it near max_batch
    forward_batch: int = 8
    token_budget: int | None = TOKEN_BUDGET  # padded tokens per forward at most (guard.models.batching)
    max_wait_ms: float = 5.0
    max_queue: int = 256
    keys: ApiKeys = field(default_factory=ApiKeys)
    audit: bool = False
    audit_text: bool = False
    audit_retention_days: float | None = None
    audit_secret: str | None = None  # the keyed hashes' secret file [default: beside an SQLite database]
    header_timeout_s: float = 10.0  # a request's headers (and a body the app leaves unread) must arrive within this
    body_timeout_s: float = 30.0  # a request body the app reads must arrive within this; then 408
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int | None = 512  # open connections at most; beyond, 503 and closed
    threads: int | None = None  # torch threads of the model worker (None: GUARD_THREADS, else torch's default)
    workers: int = 1  # model processes behind the port (guard.serve.workers)
    worker: int | None = None  # this process's index among them (None: the only one)
    retry_after_s: int = 1  # what a 503 for a full queue tells the client to wait
    review: bool = False  # serve the review page /review (guard.serve.review)
    review_sample: float = 0.05  # share of confident verdicts the review queue samples (every label alike)
    reload_s: float = 0.0  # poll the database's current versions this often and serve new ones (0: never)


@dataclass
class Work:
    """One input on its way through the batcher."""

    item: RequestItem
    policies: tuple[str, ...]
    explain: bool = False
    prepared: Prepared | None = None  # rendered and tokenised once, before the queue (Moderator.prepare)


@dataclass
class Outcome:
    verdicts: CheckResult  # {policy: Verdict}, with explanations when asked for
    latency_s: float = 0.0  # from queueing to verdict


class Moderator:
    """Prepares inputs (`prepare`, on the request's side) and runs prepared inputs through the
    model (`run_batch`: the batcher's, on its worker thread). Calls the Engine protocol only."""

    def __init__(
        self, guards: Engine, limits: ServiceLimits, forward_batch: int = 8, token_budget: int | None = TOKEN_BUDGET
    ):
        self.guards = guards
        self.limits = limits
        self.forward_batch = forward_batch
        self.token_budget = token_budget
        self.artifacts = {art.name: art for art in guards.artifacts}
        self._subsets: dict[tuple[str, ...], Engine] = {tuple(guards.names): guards}
        self._lock = threading.Lock()

    def prepare(self, work: Work) -> Work:
        """The work with its input prepared once for its policies (rendered, limit-checked,
        tokenised), or the error that refuses it: this server's token limit on the text (a
        LimitError, its 413) or the library's InputError."""
        if work.prepared is None and work.item.document:  # window by window, each within one check
            work.prepared = Prepared(check_document_fields(work.item.fields()), document=True)
        if work.prepared is None:
            if work.item.text:
                check_tokens(self.guards.text_tokens(work.item.text), self.limits, work.item.param)
            work.prepared = self._subset(work.policies).prepare(work.item.fields())
        return work

    def run_batch(self, works: list[Work]) -> list[Outcome | Exception]:
        results: list[Outcome | Exception | None] = [None] * len(works)
        for i, work in enumerate(works):
            try:
                self.prepare(work)  # already done before the queue (Service.check): a no-op then
            except Exception as exc:  # this input alone fails (a LimitError is its 413)
                results[i] = exc
        groups: dict[tuple[tuple[str, ...], bool], list[int]] = {}
        for i, work in enumerate(works):
            if results[i] is None:
                groups.setdefault((work.policies, work.explain), []).append(i)
        for (policies, explain), indices in groups.items():
            # policies sharing a prompt share one forward for the whole group
            checked = self._subset(policies).check_prepared(
                [works[i].prepared for i in indices],
                batch_size=min(len(indices), self.forward_batch),  # length-sorted forwards of this many
                token_budget=self.token_budget,
                explain=explain,
            )
            for i, verdicts in zip(indices, checked):
                results[i] = Outcome(verdicts)
        return results

    def swap(self, guards: Engine) -> None:
        """Serve `guards` (the same policies at newer versions, on the same model) from now on:
        batches already running finish on the old ones, the next ones run on these."""
        with self._lock:
            self.guards = guards
            self.artifacts = {art.name: art for art in guards.artifacts}
            self._subsets = {tuple(guards.names): guards}

    def warm_up(self) -> None:
        """One forward of every served policy (each prompt group, windows included) on a short
        text: the first request then finds the model's weights paged in and its kernels ready."""
        prepared = self.guards.prepare({"text": WARM_UP_TEXT})
        self.guards.check_prepared([prepared], batch_size=1, token_budget=self.token_budget)

    def _subset(self, policies: tuple[str, ...]) -> Engine:
        with self._lock:  # prepare runs on request threads, run_batch on the worker
            if policies not in self._subsets:
                self._subsets[policies] = self.guards.select(policies)
            return self._subsets[policies]


class Service:
    def __init__(self, guards: Engine, config: ServeConfig | None = None, store=None):
        self.config = config or ServeConfig()
        if self.config.limits.max_items > self.config.max_queue:
            raise GuardError(
                f"--max-items ({self.config.limits.max_items}) is more than --max-queue ({self.config.max_queue}) "
                "holds: such a request could never be queued"
            )
        self.guards = guards
        self.store = store
        self.metrics = Metrics()
        self.moderator = Moderator(guards, self.config.limits, self.config.forward_batch, self.config.token_budget)
        self.batcher = MicroBatcher(
            self.moderator.run_batch,
            max_batch=self.config.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            max_queue=self.config.max_queue,
            on_batch=self.metrics.observe_batch,
            on_start=self._worker_started,
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        # set once the model worker's warm-up forward is done: /readyz says ready only then
        self.warm = threading.Event()
        self.warm_up_error: str | None = None
        self.audit: AuditWriter | None = None
        self.audit_key: AuditKey | None = None
        self.watcher = None  # guard.serve.reload.VersionWatcher, with --reload-every
        if self.config.audit:
            if store is None:
                raise GuardError("the audit log needs the policy database")
            self.audit_key = AuditKey.for_store(store, self.config.audit_secret)
            self.config.keys.use_audit_key(self.audit_key)  # key ids stable across restarts
            self.audit = AuditWriter(
                AuditLog(store),
                retention_days=self.config.audit_retention_days,
                on_write=self._audit_written,
            )

    @property
    def policy_names(self) -> list[str]:
        return self.guards.names

    @property
    def multimodal(self) -> bool:
        return self.guards.takes_images

    def start(self) -> None:
        if self.audit is not None:
            self.audit.start()
        self.batcher.start()
        if self.config.reload_s > 0 and self.store is not None:
            from guard.serve.reload import VersionWatcher

            self.watcher = VersionWatcher(self, self.config.reload_s)
            self.watcher.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish every queued input, write every audit row, stop the threads."""
        if self.watcher is not None:
            self.watcher.stop()
        self.batcher.stop(timeout)
        if self.audit is not None:
            self.audit.close(timeout)

    def _worker_started(self) -> None:
        from guard.models import set_threads

        # --threads, else GUARD_THREADS, else torch's default; set on the thread that runs the
        # forwards (OpenMP keeps the count per calling thread)
        set_threads(self.config.threads)
        self._warm_up()

    def _warm_up(self) -> None:
        """A forward of every served policy before the queue is served (issue 21: without it the
        first request took 4.5 s on 2 cores while /readyz already said ready)."""
        started = time.perf_counter()
        try:
            self.moderator.warm_up()
        except Exception as exc:  # the model cannot run: /readyz says why, requests get the error
            self.warm_up_error = first_line(exc)
            log.exception("the warm-up forward failed")
            return
        self.warm.set()
        log.info(
            "ready",
            extra={"policies": self.policy_names, "warm_up_s": round(time.perf_counter() - started, 3)},
        )

    def _audit_written(self, rows: int, seconds: float) -> None:
        self.metrics.audit_rows.inc(rows)
        self.metrics.audit_seconds.observe(seconds)

    # --- which policies -------------------------------------------------------------------------

    def resolve_policies(self, requested: str | Sequence[str] | None, param: str = "model") -> tuple[str, ...]:
        """Policy names for a request: None (or an OpenAI model name) means all loaded policies."""
        if requested is None or requested == "" or requested == []:
            return tuple(self.policy_names)
        if isinstance(requested, str):
            if requested.startswith(OPENAI_MODELS):
                return tuple(self.policy_names)
            requested = [name.strip() for name in requested.split(",") if name.strip()]
        unknown = [name for name in requested if name not in self.moderator.artifacts]
        if unknown:
            raise ApiError(
                404,
                "model_not_found",
                f"no policy named {', '.join(map(repr, unknown))} is served here (serving: {', '.join(self.policy_names)})",
                param=param,
            )
        return tuple(dict.fromkeys(requested))

    # --- checking ---------------------------------------------------------------------------

    async def check(
        self, items: list[RequestItem], policies: tuple[str, ...], explain: bool = False, deadline: float | None = None
    ) -> list[Outcome]:
        """Verdicts for every item, or an ApiError: a request never gets part of its answers.
        The wait ends at `deadline` (time.monotonic(): the request's arrival plus the request
        timeout), else the request timeout from now."""
        if any(item.images for item in items) and not self.multimodal:
            reference = self.guards.model_reference
            raise bad_request(f"the policies run on '{reference}', a text model: it cannot take images", "input")
        works = [Work(item, policies, explain) for item in items]
        queued = time.monotonic()
        try:  # each input rendered and tokenised once, off the event loop and the model thread
            await asyncio.to_thread(lambda: [self.moderator.prepare(work) for work in works])
        except ApiError:
            raise
        except GuardError as exc:
            raise bad_request(str(exc)) from None
        try:
            futures = self.batcher.submit(works)
        except QueueFull:
            self.metrics.rejected.inc(len(works))
            raise ApiError(
                503,
                "queue_full",
                "the server is at capacity (its queue is full); retry after a moment",
                kind="server_error",
                headers={"Retry-After": str(self.config.retry_after_s)},
            ) from None
        except BatcherStopped:
            raise ApiError(
                503, "shutting_down", "the server is shutting down", kind="server_error", headers={"Retry-After": "5"}
            ) from None
        waiting = [asyncio.wrap_future(f) for f in futures]
        try:
            timeout = self.config.limits.timeout_s if deadline is None else max(0.0, deadline - time.monotonic())
            outcomes = await asyncio.wait_for(asyncio.gather(*waiting), timeout=timeout)
        except asyncio.TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"no verdict within {self.config.limits.timeout_s:g} s (the request timeout); nothing was decided",
                kind="server_error",
            ) from None
        except ApiError:
            raise
        except GuardError as exc:
            raise bad_request(str(exc)) from None
        finally:
            for future in futures:
                future.cancel()  # no-op for those done; drops the rest from the queue
        latency = time.monotonic() - queued
        for outcome in outcomes:
            outcome.latency_s = latency
            for name, verdict in outcome.verdicts.items():
                self.metrics.check_seconds.labels(name).observe(latency)
                self.metrics.verdicts.labels(name, verdict.label, str(verdict.flagged).lower()).inc()
        return outcomes

    async def record(
        self,
        request_id: str,
        endpoint: str,
        items: list[RequestItem],
        outcomes: list[Outcome],
        api_key: str | None,
        *,
        client_request_id: str | None = None,
        deadline: float | None = None,
    ) -> None:
        """Write the audit rows of an answered request before it is answered (no-op without --audit).

        `request_id` is the server's own id for the request; `client_request_id` the caller's
        X-Request-ID. The wait ends at `deadline` (time.monotonic(): the request timeout from
        its arrival) with a 504; rows not yet being written are then dropped. A failed write is
        this request's own 503, which says nothing of the database's error: that error's text
        can hold the parameters of the whole commit, other requests' rows among them.
        """
        if self.audit is None:
            return
        records = self._audit_records(request_id, endpoint, items, outcomes, api_key, client_request_id)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            # on timeout wait_for cancels the future: the writer skips rows it has not taken yet
            await asyncio.wait_for(asyncio.wrap_future(self.audit.write(records)), timeout=left)
        except asyncio.TimeoutError:
            log.error(
                "audit write timed out", extra={"request_id": request_id, "timeout_s": self.config.limits.timeout_s}
            )
            raise ApiError(
                504,
                "timeout",
                f"no answer within {self.config.limits.timeout_s:g} s (the request timeout): the verdict could not "
                "be recorded in the audit log in time; nothing is reported",
                kind="server_error",
            ) from None
        except Exception as exc:
            reason = exc.reason if isinstance(exc, AuditFailed) else type(exc).__name__
            log.error("audit write failed", extra={"request_id": request_id, "reason": reason})
            raise ApiError(
                503,
                "audit_failed",
                "the verdict could not be recorded in the audit log; nothing is reported",
                kind="server_error",
                headers={"Retry-After": str(self.config.retry_after_s)},
            ) from None

    def _audit_records(
        self,
        request_id: str,
        endpoint: str,
        items: list[RequestItem],
        outcomes: list[Outcome],
        api_key,
        client_request_id,
    ) -> list[AuditRecord]:
        """One audit row per input and policy; the input's text only with --audit-text."""
        fingerprint = self.guards.fingerprint
        created = now_iso()
        records = []
        for index, (item, outcome) in enumerate(zip(items, outcomes)):
            digest = self.audit_key.input_digest(item.recorded_text, [image.sha256 for image in item.images])
            for name, verdict in outcome.verdicts.items():
                records.append(
                    AuditRecord(
                        created_at=created,
                        request_id=request_id,
                        client_request_id=client_request_id,
                        item=index,
                        endpoint=endpoint,
                        policy=name,
                        policy_version=verdict.version,
                        model_fingerprint=fingerprint,
                        input_sha256=digest,
                        input_text=item.recorded_text if self.config.audit_text else None,
                        label=verdict.label,
                        flagged=verdict.flagged,
                        scores={k: round(v, 6) for k, v in (verdict.calibrated or verdict.scores).items()},
                        latency_ms=round(outcome.latency_s * 1000, 3),
                        api_key=api_key,
                        votes=dict(Counter(vote.label for vote in verdict.votes)),
                        uncertain=bool(verdict.uncertain),
                        nearest=self._nearest(name, verdict) if self.config.review else None,
                    )
                )
        return records

    def _nearest(self, name: str, verdict) -> list | None:
        """The verdict's nearest exemplars at its top heads, as `guard check --explain` finds them,
        for the review page: from the head vectors the check already has, no model run. None when
        the version that judged it is no longer the one loaded (a reload in between)."""
        art = self.moderator.artifacts.get(name)
        if art is None or art.version != verdict.version or verdict.vectors is None:
            return None
        votes = [vote.label for vote in verdict.votes]
        found = nearest_exemplars(art, verdict.vectors, votes, REVIEW_HEADS, REVIEW_NEIGHBOURS)
        return [head.to_dict() for head in found]
