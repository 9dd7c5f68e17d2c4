"""`dispatchd.client` against a real daemon: every call, its typed results and its errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dispatchd.client import ApiError, Client, SendItem, Status
from dispatchd.daemon import Daemon
from tests.conftest import DaemonFactory
from tests.helpers import NUMBER, UNKNOWN, hold


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    async with Client(f"http://127.0.0.1:{daemon.port}") as c:
        yield c


async def test_send_follow_and_read_a_message(client: Client) -> None:
    sent = await client.send("(703) 457-3322", "Hello from the client", validity_period=600)
    assert (sent.to_number, sent.status, sent.encoding) == (NUMBER, Status.QUEUED, "GSM-7")
    assert sent.validity_period == 600 and sent.created_at is not None
    assert sent.expires_at is not None
    assert (sent.expires_at - sent.created_at).total_seconds() == pytest.approx(600, abs=1)

    events = [e async for e in client.events(sent.id)]
    assert [e.status for e in events] == [
        Status.QUEUED,
        Status.SENDING,
        Status.SENT,
        Status.DELIVERED,
    ]
    assert [e.final for e in events] == [False, False, False, True]
    assert {e.message_id for e in events} == {sent.id}

    done = await client.wait_for_final(sent.id, timeout=10)
    assert done.final and done.status is Status.DELIVERED
    assert done.provider in ("provider1", "provider2") and done.provider_message_id
    assert done.attempts and done.attempts[-1].outcome == "accepted"
    assert [h.status for h in done.history] == [e.status for e in events]
    assert done == await client.get(sent.id)

    # Resuming after an event gives only the later ones.
    later = [e.status async for e in client.events(sent.id, last_event_id=events[1].event_id)]
    assert later == [Status.SENT, Status.DELIVERED]


async def test_list_follows_cursors_and_stops_at_the_limit(client: Client) -> None:
    other = "+442079460958"
    ids = [(await client.send(other, f"n{i}")).id for i in range(5)]
    await client.send(NUMBER, "not listed")
    listed = [m.id async for m in client.list(to_number=other, page_size=2)]
    assert listed == ids[::-1]  # newest first, across three pages
    assert [m.id async for m in client.list(to_number=other, limit=3, page_size=2)] == (
        ids[::-1][:3]
    )
    for msg_id in ids:
        await client.wait_for_final(msg_id, timeout=10)
    delivered = [m async for m in client.list(to_number=other, status="delivered")]
    assert len(delivered) == 5 and all(m.status is Status.DELIVERED for m in delivered)


async def test_send_batch_reports_each_item(client: Client) -> None:
    result = await client.send_batch(
        [
            SendItem(NUMBER, "first"),
            SendItem("12", "bad number"),
            SendItem(NUMBER, "third", smart_encoding=True),
        ]
    )
    assert (result.accepted, result.rejected) == (2, 1)
    assert [r.status for r in result.results] == [202, 422, 202]
    first, bad, third = result.results
    assert first.message is not None and first.message.message == "first"
    assert third.message is not None and third.error is None
    assert bad.message is None and bad.error is not None
    assert bad.error.code == "validation_failed"
    assert [e.field for e in bad.error.errors] == ["to_number"]
    done = await client.wait_for_final(third.message.id, timeout=10)
    assert done.status is Status.DELIVERED


async def test_errors_are_api_errors_with_the_problem_details(client: Client) -> None:
    with pytest.raises(ApiError) as invalid:
        await client.send("12", " ")
    err = invalid.value
    assert (err.status, err.code) == (422, "validation_failed")
    assert {(e.field, e.code) for e in err.errors} == {
        ("to_number", "invalid_number"),
        ("message", "empty"),
    }
    assert "not a valid phone number" in err.detail and err.title
    for call in (client.get(UNKNOWN), client.wait_for_final(UNKNOWN, timeout=1)):
        with pytest.raises(ApiError) as missing:
            await call
        assert (missing.value.status, missing.value.code) == (404, "message_not_found")
    with pytest.raises(ApiError) as no_stream:
        [e async for e in client.events(UNKNOWN)]
    assert no_stream.value.code == "message_not_found"


async def test_an_error_that_is_not_a_problem_is_an_api_error_too() -> None:
    """A proxy in front of dispatchd may answer with its own HTML error page."""

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<h1>502 Bad Gateway</h1>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bad_gateway)
    async with TestServer(app) as proxy, Client(str(proxy.make_url(""))) as client:
        with pytest.raises(ApiError) as caught:
            await client.get(UNKNOWN)
    err = caught.value
    assert (err.status, err.code, err.title) == (502, "http_502", "Bad Gateway")
    assert "502 Bad Gateway" in err.detail


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), (" 12 ", 12.0), ("\u00b2", None), ("\u0661\u0662", None), ("soon", None)],
    ids=["digits", "padded", "superscript", "arabic-indic", "word"],
)
async def test_retry_after_takes_ascii_digits_only(header: str, expected: float | None) -> None:
    """`str.isdigit()` is true for "²" and other scripts' digits, which float() refuses."""

    async def busy(request: web.Request) -> web.Response:
        problem = {"status": 503, "code": "storage_unavailable", "title": "t", "detail": "d"}
        return web.json_response(problem, status=503, headers={"Retry-After": header})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", busy)
    async with TestServer(app) as server, Client(str(server.make_url(""))) as client:
        with pytest.raises(ApiError) as caught:
            await client.get(UNKNOWN)
    assert (caught.value.code, caught.value.retry_after) == ("storage_unavailable", expected)


async def test_message_ids_are_quoted_into_one_path_segment() -> None:
    """An id holding "/", "?" or "#" reaches the server as the one id it is."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.match_info["id"])
        return web.json_response({"status": 404, "code": "message_not_found"}, status=404)

    app = web.Application()
    app.router.add_get("/messages/{id}", record)
    app.router.add_get("/messages/{id}/events", record)
    odd = "a/b?c#d %"
    async with TestServer(app) as server, Client(str(server.make_url(""))) as client:
        for call in (client.get(odd), client.wait_for_final(odd, timeout=1)):
            with pytest.raises(ApiError):
                await call
        with pytest.raises(ApiError):
            [e async for e in client.events(odd)]
    assert seen == [odd, odd, odd]


async def test_wait_for_final_gives_up_after_its_timeout(client: Client, daemon: Daemon) -> None:
    hold(daemon)
    msg = await client.send(NUMBER, "held")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match="still queued"):
        await client.wait_for_final(msg.id, timeout=0.3)
    assert 0.3 <= loop.time() - started < 5


async def test_api_key_and_idempotency_key_are_sent(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(api={"keys": ["client-test-key"]})
    base = f"http://127.0.0.1:{daemon.port}"
    async with Client(base) as anonymous:
        with pytest.raises(ApiError) as refused:
            await anonymous.send(NUMBER, "no key")
        assert refused.value.status == 401
    async with Client(base, api_key="client-test-key") as client:
        first = await client.send(NUMBER, "once", idempotency_key="order-42")
        again = await client.send(NUMBER, "once", idempotency_key="order-42")
        assert again.id == first.id
        other = await client.send(NUMBER, "once", idempotency_key="order-43")
        assert other.id != first.id
        assert (await client.wait_for_final(first.id, timeout=10)).final
