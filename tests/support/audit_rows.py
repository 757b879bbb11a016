"""Audit rows for tests that write the audit log directly (no server): one verdict per row."""

from __future__ import annotations

from datetime import datetime

from guard.store.audit import AuditRecord


def audit_record(i: int, when: datetime, policy: str = "p", flagged: bool = False, **fields) -> AuditRecord:
    """Row `i` of a check's verdict on `policy` at `when`; `fields` override any column."""
    row = dict(
        created_at=when.isoformat(timespec="microseconds"),
        request_id=f"r{i}",
        item=0,
        endpoint="check",
        policy=policy,
        policy_version="v1",
        model_fingerprint="fp",
        input_sha256=f"{i:064x}",
        label="harmful" if flagged else "benign",
        flagged=flagged,
        scores={"harmful": 0.25},
        latency_ms=1.5,
    )
    return AuditRecord(**{**row, **fields})
