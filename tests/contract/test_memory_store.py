"""What the memory backend adds beyond the contract: a switch to refuse writes, and callback
bodies rendered byte for byte as SQLite's trigger renders them."""

from __future__ import annotations

import random
import sqlite3

import pytest

from dispatchd.domain.errors import StoreUnavailable
from dispatchd.domain.models import Status
from dispatchd.store.memory import MemoryStore, _callback_payload
from tests.helpers import NOW, queued_message

# The trigger's body (dispatchd/store/sqlite/schema.py), over plain values.
TRIGGER_BODY = """SELECT json_object('id', :id, 'status', :status, 'to_number', :to_number,
    'provider', :provider,
    'error', CASE WHEN :code IS NULL THEN NULL
        ELSE json_object('code', :code, 'detail', :detail) END,
    'at', strftime('%Y-%m-%dT%H:%M:%fZ', :at, 'unixepoch'))"""


async def test_refused_writes_make_it_unhealthy_until_allowed_again() -> None:
    store = MemoryStore(clock=lambda: NOW)
    store.refuse_writes("disk full")
    assert (store.healthy, store.last_error) == (False, "disk full")
    with pytest.raises(StoreUnavailable, match="disk full"):
        await store.insert([queued_message("m-1")], "accepted")
    assert await store.probe() is False
    assert await store.counts() == {}, "reads still work"
    store.refuse_writes(None)
    assert await store.probe() is True
    await store.insert([queued_message("m-1")], "accepted")
    assert await store.counts() == {"queued": 1}


def test_callback_bodies_match_what_sqlite_renders() -> None:
    rng = random.Random(3)
    texts = ['"quoted"', "back\\slash", "line\nbreak\ttab", "\x00\x1f\x7f", "é — 😀 \u2028", ""]
    with sqlite3.connect(":memory:") as conn:
        for _ in range(2000):
            at = rng.choice([NOW, NOW + 0.0005, NOW + 0.9995, rng.uniform(1e9, 4e9)])
            code = rng.choice([None, "providers_unavailable"])
            msg = queued_message(
                "m-" + rng.choice(texts),
                to_number=rng.choice(texts),
                status=rng.choice(list(Status)),
                updated_at=at,
                provider=rng.choice([None, "provider1", *texts]),
                error_code=code,
                error_detail=rng.choice([None, *texts]),
            )
            params = {
                "id": msg.id,
                "status": msg.status.value,
                "to_number": msg.to_number,
                "provider": msg.provider,
                "code": code,
                "detail": msg.error_detail,
                "at": at,
            }
            [(expected,)] = conn.execute(TRIGGER_BODY, params).fetchall()
            assert _callback_payload(msg) == expected, params
