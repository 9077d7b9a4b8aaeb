"""API keys: shown once, stored hashed, checked, listed without secrets, revoked."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from catalog import schema
from catalog.api_keys import create_key, key_id_of, list_keys, revoke_key, verify_key
from catalog.store import Catalog


@pytest.fixture
def catalog(tmp_path):
    catalog = Catalog(tmp_path / "catalog.db")
    yield catalog
    catalog.close()


def test_a_key_is_stored_hashed_and_checked(catalog):
    key, text = create_key(catalog, "listings:write", seller_id="s1", name="shop")
    prefix, key_id, secret = text.split("_", 2)
    assert (prefix, key_id, key.id, key_id_of(text)) == ("ms", key.id, key_id, key_id)
    assert len(secret) == 43  # 32 random bytes, URL-safe base64
    with catalog.engine.connect() as conn:
        row = conn.execute(select(schema.api_keys)).one()
    assert all(secret not in str(value) for value in row) and len(row.secret_hash) == 64
    assert verify_key(catalog, text) == key and key.allows("listings:write") and not key.allows("admin")
    assert verify_key(catalog, text[:-1] + ("A" if text[-1] != "A" else "B")) is None
    assert verify_key(catalog, f"ms_{'0' * 12}_{secret}") is None and verify_key(catalog, "nonsense") is None


def test_admin_allows_every_scope_and_unknown_scopes_are_refused(catalog):
    admin, _ = create_key(catalog, "admin")
    assert all(admin.allows(scope) for scope in ("listings:write", "events:write", "admin"))
    with pytest.raises(ValueError):
        create_key(catalog, "root")


def test_revoked_keys_are_refused_and_listed_as_revoked(catalog):
    first, first_text = create_key(catalog, "events:write")
    second, second_text = create_key(catalog, "admin", name="ops")
    assert revoke_key(catalog, first.id) and not revoke_key(catalog, first.id) and not revoke_key(catalog, "nope")
    assert verify_key(catalog, first_text) is None and verify_key(catalog, second_text) == second
    listed = {key.id: key for key in list_keys(catalog)}
    assert listed[first.id].revoked_at is not None and listed[second.id].revoked_at is None
