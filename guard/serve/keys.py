"""API keys: where they come from, their roles, and a constant-time check of `Authorization: Bearer KEY`.

Keys come from `--api-key` (repeatable), `GUARD_API_KEYS` (separated by commas or whitespace)
and a key file (`--api-key-file` or `GUARD_API_KEYS_FILE`: one key a line, `#` comments). The
environment and the file keep keys out of `ps` listings; prefer them to `--api-key`.

A key may name its role before a colon: `review:KEY` or `admin:KEY` (`check:KEY` is the same as a
bare `KEY`). Roles are ordered, each allowing what the ones before it allow: `check` (the
moderation API), `review` (the review page and its API), `admin` (promote, and every review).
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
ROLES = ("check", "review", "admin")  # each allows what the ones before it allow


def split_role(entry: str) -> tuple[str, str]:
    """(role, key) of a key entry: `review:KEY`, `admin:KEY`, `check:KEY` or a bare KEY (check)."""
    role, colon, key = entry.partition(":")
    if colon and role in ROLES:
        return role, key
    return "check", entry


def allows(role: str | None, needed: str) -> bool:
    """Whether a key of `role` may do what needs `needed`."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


class ApiKeys:
    """A set of accepted keys; empty means no authentication."""

    def __init__(self, keys: list[str] = ()):
        roles: dict[bytes, str] = {}
        for entry in keys:
            role, key = split_role(entry)
            if len(key) < MIN_KEY_LENGTH:
                raise GuardError(f"an API key has {len(key)} characters; use at least {MIN_KEY_LENGTH}")
            digest = hashlib.sha256(key.encode()).digest()
            if ROLES.index(role) >= ROLES.index(roles.get(digest, "check")):
                roles[digest] = role  # a key given twice keeps its highest role
        # compare digests: equal lengths, and the keys themselves are not kept
        self._digests = list(roles)
        self._roles = roles
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
        found = self.identify(authorization)
        return None if found is None else found[0]

    def identify(self, authorization: str | None) -> tuple[str, str] | None:
        """(key id, role) if the header carries a valid key (`Bearer KEY`), else None."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.identify_key(token.strip())

    def identify_key(self, key: str) -> tuple[str, str] | None:
        """(key id, role) of a key as typed (the review page's login form), else None."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for known in self._digests:
            if hmac.compare_digest(digest, known):
                found = known
        return None if found is None else (self._key_id(found), self._roles[found])

    def id_roles(self) -> dict[str, str]:
        """Each key's id and its role."""
        return {self._key_id(digest): role for digest, role in self._roles.items()}

    def roles(self) -> set[str]:
        """The roles the keys have."""
        return set(self._roles.values())


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
