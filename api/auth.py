"""Who may write: the API key of a request (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``), checked
against the catalogue's `api_keys` table (catalog/api_keys.py) on every request, so a revoked key is refused at
once by every server process. Reads need no key.

``require_scope(scope)`` makes the dependency a write route declares: 401 (with ``WWW-Authenticate``) without a
key or with an unknown or revoked one, 403 with a key of another scope; an ``admin`` key may do everything. The
key's secret is never logged nor echoed: messages name the key by its public id at most.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.deps import CatalogDep
from catalog.api_keys import ApiKey, verify_key

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKeyBearer",
    description="An API key from `marketsearch keys create`, as `Authorization: Bearer ms_<id>_<secret>`.",
)
header_scheme = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description="The same API key in an `X-API-Key` header, for clients that cannot set `Authorization`.",
)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="marketsearch"'}


def require_scope(scope: str):
    """A dependency returning the request's `ApiKey` when it may act in ``scope``; 401 or 403 otherwise.

    Make one per scope at import time and share it (FastAPI then checks the key once per request even when
    several dependencies of a route ask for it)."""

    async def caller_key(
        catalog: CatalogDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
        header_key: Annotated[str | None, Security(header_scheme)],
    ) -> ApiKey:
        presented = credentials.credentials if credentials is not None else header_key
        how = f"create one with `marketsearch keys create --scope {scope}`"
        if not presented:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                f"this route needs an API key with scope {scope}: send `Authorization: Bearer <key>` ({how})",
                headers=CHALLENGE,
            )
        # a primary-key lookup (well under a millisecond): cheaper here than a hop to the thread pool
        key = verify_key(catalog, presented.strip())
        if key is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                f"the API key is unknown or revoked ({how})",
                headers={"WWW-Authenticate": 'Bearer realm="marketsearch", error="invalid_token"'},
            )
        if not key.allows(scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"the API key {key.id} has scope {key.scope}; this route needs {scope}"
            )
        return key

    caller_key.__name__ = f"api_key_{scope.replace(':', '_')}"
    return caller_key


listings_write = require_scope("listings:write")
events_write = require_scope("events:write")
admin = require_scope("admin")

ListingsKey = Annotated[ApiKey, Depends(listings_write)]
EventsKey = Annotated[ApiKey, Depends(events_write)]
AdminKey = Annotated[ApiKey, Depends(admin)]


def acting_seller(key: ApiKey) -> str | None:
    """The seller whose listings ``key`` may change, or None for a key that may change any listing (an admin
    key, or a listings:write key created without --seller)."""
    return None if key.scope == "admin" else key.seller_id
