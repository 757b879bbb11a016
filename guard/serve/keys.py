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

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None) -> str | None:
        """The key's id (a short hash, safe to log) if the header carries a valid key, else None.

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
        return None if found is None else found.hex()[:12]


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
