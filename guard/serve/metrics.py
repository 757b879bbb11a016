"""Prometheus metrics of one server (its own registry, so several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "guard_http_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter("guard_errors", "Requests answered with an error, by error code", ["code"], registry=r)
        self.request_seconds = Histogram(
            "guard_http_request_duration_seconds",
            "Time from request to response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.check_seconds = Histogram(
            "guard_check_duration_seconds",
            "Time from queueing one input to its verdict, by policy",
            ["policy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter(
            "guard_verdicts", "Verdicts given, by policy, label and flagged", ["policy", "label", "flagged"], registry=r
        )
        self.batch_size = Histogram(
            "guard_batch_size", "Inputs per model call (micro-batch size)", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "guard_batch_duration_seconds", "Time of one model call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("guard_queue_depth", "Inputs waiting for the model", registry=r)
        self.rejected = Counter("guard_queue_rejected", "Inputs refused because the queue was full", registry=r)
        self.audit_rows = Counter("guard_audit_rows", "Audit rows written", registry=r)
        self.audit_seconds = Histogram(
            "guard_audit_write_duration_seconds", "Time of one audit write (a batch of rows)", registry=r
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
