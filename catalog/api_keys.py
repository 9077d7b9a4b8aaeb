"""API keys of the service (table `api_keys`): created with `marketsearch keys create`, checked by `api.auth`.

A key reads ``ms_<id>_<secret>``: ``id`` is public (12 hex digits, listed and revoked by it), ``secret`` is 256
random bits (``secrets.token_urlsafe(32)``). Only the secret's SHA-256 is stored. A slow, salted password hash
(bcrypt, argon2) protects secrets people choose, which are guessable; a 256-bit random secret cannot be guessed
from its hash, so one SHA-256 is enough, and checking a key on every request stays cheap.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update

from catalog import schema
from catalog.store import Catalog

SCOPES = ("listings:write", "events:write", "admin")
PREFIX = "ms"
_KEY = re.compile(r"^ms_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    scope: str
    seller_id: str | None
    name: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    def allows(self, scope: str) -> bool:
        """``admin`` may do everything; any other key only its own scope."""
        return self.scope in (scope, "admin")


def create_key(
    catalog: Catalog, scope: str, *, seller_id: str | None = None, name: str | None = None
) -> tuple[ApiKey, str]:
    """A new key: its record and the full key text, which is shown once and never stored."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(key_id, scope, seller_id, name, _utc_now(), None)
    with catalog.engine.begin() as conn:
        conn.execute(
            schema.api_keys.insert(),
            {
                "id": key.id,
                "secret_hash": _hash(secret),
                "scope": scope,
                "seller_id": seller_id,
                "name": name,
                "created_at": key.created_at,
                "revoked_at": None,
            },
        )
    return key, f"{PREFIX}_{key_id}_{secret}"


def verify_key(catalog: Catalog, presented: str) -> ApiKey | None:
    """The key ``presented`` is, when it is well-formed, known, not revoked and its secret matches; else None."""
    match = _KEY.match(presented)
    if match is None:
        return None
    key_id, secret = match.groups()
    with catalog.engine.connect() as conn:
        row = conn.execute(select(schema.api_keys).where(schema.api_keys.c.id == key_id)).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
        return None
    return _from_row(row)


def list_keys(catalog: Catalog) -> list[ApiKey]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(select(schema.api_keys).order_by(schema.api_keys.c.created_at, schema.api_keys.c.id))
        return [_from_row(row) for row in rows]


def revoke_key(catalog: Catalog, key_id: str) -> bool:
    """Revoke a key (at once, in every server process: keys are checked against the database on each request).
    False when there is no such key or it was revoked already."""
    keys = schema.api_keys
    with catalog.engine.begin() as conn:
        result = conn.execute(
            update(keys).where(keys.c.id == key_id, keys.c.revoked_at.is_(None)).values(revoked_at=_utc_now())
        )
    return result.rowcount > 0


def key_id_of(presented: str) -> str | None:
    """The public id part of a well-formed key (for logs and rate limits; never the secret)."""
    match = _KEY.match(presented)
    return match.group(1) if match else None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _from_row(row) -> ApiKey:
    return ApiKey(row.id, row.scope, row.seller_id, row.name, row.created_at, row.revoked_at)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
