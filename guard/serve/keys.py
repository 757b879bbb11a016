"""API keys: where they come from, and a constant-time check of `Authorization: Bearer KEY`.

Keys come from `--api-key` (repeatable), `GUARD_API_KEYS` (separated by commas or whitespace)
and a key file (`--api-key-file` or `GUARD_API_KEYS_FILE`: one key a line, `#` comments). The
environment and the file keep keys out of `ps` listings; prefer them to `--api-key`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from guard.errors import GuardError

MIN_KEY_LENGTH = 16


class ApiKeys:
    """A set of accepted keys; empty means no authentication."""

    def __init__(self, keys: list[str] = ()):
        for key in keys:
            if len(key) < MIN_KEY_LENGTH:
                raise GuardError(f"an API key has {len(key)} characters; use at least {MIN_KEY_LENGTH}")
        # compare digests: equal lengths, and the keys themselves are not kept
        self._digests = [hashlib.sha256(key.encode()).digest() for key in dict.fromkeys(keys)]
        # key ids are a keyed hash: the audit secret's (`use_audit_key`) or, without an audit log,
        # a secret of this process; either way a guessed key cannot be matched against an id
        self._key_id = self._process_key_id

    @staticmethod
    def _process_key_id(digest: bytes, _secret=secrets.token_bytes(32)) -> str:
        return hmac.new(_secret, b"api-key\0" + digest, hashlib.sha256).hexdigest()[:12]

    def use_audit_key(self, audit_key) -> None:
        """Derive key ids with the audit secret (guard.store.audit.AuditKey): stable across restarts."""
        self._key_id = audit_key.key_id

    @property
    def ids(self) -> list[str]:
        """The id of every key, as `check` gives it (safe to log)."""
        return [self._key_id(digest) for digest in self._digests]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None) -> str | None:
        """The key's id (a short keyed hash, safe to log) if the header carries a valid key, else None.

        Every key is compared, with `hmac.compare_digest`, whatever matched: the time taken says
        nothing about which key, or how much of one, was right.
        """
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for known in self._digests:
            if hmac.compare_digest(digest, known):
                found = known
        return None if found is None else self._key_id(found)


def load_keys(keys: list[str] | None = None, key_file: str | None = None, env=os.environ) -> ApiKeys:
    """Keys from the options, GUARD_API_KEYS and a key file together."""
    found = list(keys or [])
    found += [k for k in re.split(r"[\s,]+", env.get("GUARD_API_KEYS", "")) if k]
    key_file = key_file or env.get("GUARD_API_KEYS_FILE")
    if key_file:
        try:
            lines = Path(key_file).read_text().splitlines()
        except OSError as exc:
            raise GuardError(f"cannot read the API key file '{key_file}' ({exc.strerror or exc})") from None
        found += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return ApiKeys(found)
