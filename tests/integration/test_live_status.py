"""Live status through a real daemon: Server-Sent Events and long polling.

Messages are held in `queued` by pausing both providers (an operator action: nothing is
claimed, nothing fails) so a watcher is provably waiting before the status moves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from dispatchd.client import Client, SendItem
from dispatchd.daemon import Daemon
from dispatchd.http import live as dispatchd_live
from tests.conftest import wait_for
from tests.helpers import NUMBER, UNKNOWN, hold


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{daemon.port}") as session:
        yield session


def release(daemon: Daemon) -> None:
    for name in daemon.health.names:
        daemon.health.resume(name)
    assert daemon.worker is not None
    daemon.worker.wake()


async def send(http: aiohttp.ClientSession, text: str = "Hello") -> str:
    async with http.post("/messages", json={"to_number": NUMBER, "message": text}) as resp:
        assert resp.status == 202
        return str((await resp.json())["id"])


async def watchers_at_least(daemon: Daemon, n: int) -> None:
    await wait_for(lambda: daemon.watchers.count >= n, what=f"{n} watchers waiting")


class Stream:
    """An event stream read line by line, as a browser's EventSource would."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []

    async def next_event(self) -> dict[str, Any] | None:
        """The next event's fields (`data` parsed), or None when the server ends the stream."""
        fields: dict[str, Any] = {}
        async with asyncio.timeout(10):
            async for raw in self.resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line:
                    name, _, value = line.partition(": ")
                    fields[name] = json.loads(value) if name == "data" else value
                elif fields:
                    return fields
        return None

    async def rest(self) -> list[dict[str, Any]]:
        events = []
        while (event := await self.next_event()) is not None:
            events.append(event)
        return events


async def open_stream(
    http: aiohttp.ClientSession, msg_id: str, headers: dict[str, str] | None = None
) -> Stream:
    resp = await http.get(f"/messages/{msg_id}/events", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    return Stream(resp)


# -- Server-Sent Events -------------------------------------------------------------------


async def test_events_follow_a_message_to_its_final_status_then_end(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    hold(daemon)
    msg_id = await send(http)
    stream = await open_stream(http, msg_id)
    first = await stream.next_event()
    assert first is not None
    assert (first["event"], first["id"]) == ("status", "0")
    assert first["data"]["status"] == "queued" and first["data"]["final"] is False
    release(daemon)
    rest = await stream.rest()  # returns only because the server closed the stream
    statuses = [e["data"]["status"] for e in rest]
    assert statuses == ["sending", "sent", "delivered"]
    assert rest[-1]["data"]["final"] is True
    assert all(e["data"]["id"] == msg_id for e in rest)
    # The events are the message's history, numbered by their place in it.
    async with http.get(f"/messages/{msg_id}") as resp:
        history = (await resp.json())["history"]
    for event in [first, *rest]:
        entry = history[int(event["id"])]
        assert (event["data"]["status"], event["data"]["at"]) == (entry["status"], entry["at"])


async def test_a_late_subscriber_gets_the_whole_history_and_last_event_id_resumes(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    msg_id = await send(http)
    await wait_for(lambda: _final(daemon, msg_id), what="delivery")
    late = await (await open_stream(http, msg_id)).rest()
    assert [e["data"]["status"] for e in late] == ["queued", "sending", "sent", "delivered"]
    resumed = await (await open_stream(http, msg_id, {"Last-Event-ID": late[1]["id"]})).rest()
    assert [e["data"]["status"] for e in resumed] == ["sent", "delivered"]
    # A client that saw the final event reconnects to an empty, closed stream.
    done = await (await open_stream(http, msg_id, {"Last-Event-ID": late[-1]["id"]})).rest()
    assert done == []


async def test_notes_that_keep_the_status_are_not_events(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    msg_id = await send(http)
    await wait_for(lambda: _final(daemon, msg_id), what="delivery")
    assert daemon.service is not None
    stored = await daemon.service.get(msg_id)
    assert stored is not None and stored.provider_message_id is not None
    # A duplicate report on a final message is recorded in history, but changes nothing.
    callback = daemon.service.callback_url(msg_id).split(str(daemon.port), 1)[1]
    report = {"status": "failed", "message_id": stored.provider_message_id}
    async with http.post(callback, json=report) as resp:
        assert resp.status == 204
    events = await (await open_stream(http, msg_id)).rest()
    assert [e["data"]["status"] for e in events] == ["queued", "sending", "sent", "delivered"]


async def test_idle_streams_get_heartbeats(
    daemon: Daemon, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatchd_live, "HEARTBEAT", 0.05)
    hold(daemon)
    stream = await open_stream(http, await send(http))
    assert (await stream.next_event()) is not None
    reader = asyncio.create_task(stream.next_event())
    await wait_for(lambda: len(stream.comments) >= 2, what="two heartbeats")
    assert set(stream.comments) == {": keep-alive"}
    release(daemon)
    event = await reader
    assert event is not None and event["data"]["status"] == "sending"
    stream.resp.close()


async def test_stream_errors_are_problems_before_the_stream_starts(
    http: aiohttp.ClientSession,
) -> None:
    async with http.get(f"/messages/{UNKNOWN}/events") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "message_not_found"
    msg_id = await send(http)
    for bad in ("-1", "x", "1.5", "99999999999", "٣"):
        async with http.get(f"/messages/{msg_id}/events", headers={"Last-Event-ID": bad}) as resp:
            assert resp.status == 422, bad
            problem = await resp.json()
            assert [e["field"] for e in problem["errors"]] == ["Last-Event-ID"]


async def test_head_answers_the_headers_and_holds_nothing(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    hold(daemon)
    msg_id = await send(http)
    async with asyncio.timeout(5), http.head(f"/messages/{msg_id}/events") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
    await wait_for(lambda: daemon.watchers.count == 0, what="the HEAD handler to end")


# -- long polling -------------------------------------------------------------------------


async def test_long_poll_answers_as_soon_as_the_status_changes(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    hold(daemon)
    msg_id = await send(http)
    started = time.monotonic()
    poll = asyncio.create_task(http.get(f"/messages/{msg_id}", params={"wait": "30"}))
    await watchers_at_least(daemon, 1)
    assert not poll.done()
    release(daemon)
    async with await poll as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] != "queued"
    assert "history" in body and "attempts" in body  # the detailed resource
    assert time.monotonic() - started < 10


async def test_long_poll_answers_after_the_wait_when_nothing_changes(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    hold(daemon)
    msg_id = await send(http)
    started = time.monotonic()
    async with http.get(f"/messages/{msg_id}", params={"wait": "0.3"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "queued"
    assert time.monotonic() - started >= 0.3
    assert daemon.watchers.count == 0


async def test_long_poll_answers_at_once_when_final_or_already_changed(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    msg_id = await send(http)
    await wait_for(lambda: _final(daemon, msg_id), what="delivery")
    started = time.monotonic()
    async with http.get(f"/messages/{msg_id}", params={"wait": "60"}) as resp:
        assert (await resp.json())["status"] == "delivered"
    # `status` is what the client saw last: anything else answers at once.
    hold(daemon)
    queued = await send(http)
    async with http.get(f"/messages/{queued}", params={"wait": "60", "status": "sent"}) as resp:
        assert (await resp.json())["status"] == "queued"
    assert time.monotonic() - started < 5


async def test_long_poll_rejects_bad_parameters(http: aiohttp.ClientSession) -> None:
    msg_id = await send(http)
    for query, fields in [
        ({"wait": "61"}, ["wait"]),
        ({"wait": "-1"}, ["wait"]),
        ({"wait": "soon"}, ["wait"]),
        ({"wait": "nan"}, ["wait"]),
        ({"wait": ""}, ["wait"]),
        ({"wait": "1", "status": "lost"}, ["status"]),
        ({"wait": "inf", "status": ""}, ["wait", "status"]),
    ]:
        async with http.get(f"/messages/{msg_id}", params=query) as resp:
            assert resp.status == 422, query
            assert [e["field"] for e in (await resp.json())["errors"]] == fields
    for ok in ("0", "2.5e-3", ".5", "60"):
        async with http.get(f"/messages/{msg_id}", params={"wait": ok}) as resp:
            assert resp.status == 200, ok
    async with http.get(f"/messages/{UNKNOWN}", params={"wait": "30"}) as resp:
        assert resp.status == 404


# -- shutdown and scale -------------------------------------------------------------------


async def test_shutdown_ends_open_streams_and_long_polls_promptly(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    hold(daemon)
    msg_id = await send(http)
    stream = await open_stream(http, msg_id)
    assert (await stream.next_event()) is not None
    poll = asyncio.create_task(http.get(f"/messages/{msg_id}", params={"wait": "60"}))
    await watchers_at_least(daemon, 2)
    started = time.monotonic()
    await daemon.stop(grace=5.0)
    assert time.monotonic() - started < 3
    assert await stream.rest() == []  # ended, without a final status
    async with await poll as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "queued"


@pytest.mark.slow
async def test_clients_that_hang_up_leave_no_watchers_behind(
    daemon: Daemon, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """50 long polls (wait=60) and 50 event streams, dropped once all are waiting: every
    handler ends at once, not after its wait or at its next heartbeat (15 s)."""
    hold(daemon)
    msg_id = await send(http)
    sockets = []
    for path in [f"/messages/{msg_id}?wait=60"] * 50 + [f"/messages/{msg_id}/events"] * 50:
        _, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        sockets.append(writer)
    await wait_for(lambda: daemon.watchers.count == 100, what="100 watchers")
    for writer in sockets:
        writer.close()
    await wait_for(lambda: daemon.watchers.count == 0, within=5, what="the watchers to end")
    # The daemon is none the worse: a poll still answers, and nothing was logged as an error.
    async with http.get(f"/messages/{msg_id}", params={"wait": "0"}) as resp:
        assert resp.status == 200
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.slow
async def test_a_thousand_watchers_all_see_their_message_delivered(
    daemon: Daemon,
) -> None:
    """500 event streams and 500 long polls, one per message, on one client session."""
    hold(daemon)
    base = f"http://127.0.0.1:{daemon.port}"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(base, session=session)
        batch = await client.send_batch([SendItem(NUMBER, f"watched {i}") for i in range(1000)])
        ids = [r.message.id for r in batch.results if r.message is not None]
        assert len(ids) == 1000

        async def by_events(msg_id: str) -> str:
            statuses = [e.status.value async for e in client.events(msg_id)]
            return statuses[-1]

        async def by_polling(msg_id: str) -> str:
            return (await client.wait_for_final(msg_id, timeout=60)).status.value

        watchers = [
            asyncio.create_task((by_events if i % 2 else by_polling)(msg_id))
            for i, msg_id in enumerate(ids)
        ]
        await wait_for(lambda: daemon.watchers.count == 1000, within=30, what="1000 watchers")
        release(daemon)
        async with asyncio.timeout(60):
            finals = await asyncio.gather(*watchers)
    assert finals == ["delivered"] * 1000
    assert daemon.watchers.count == 0


async def _final(daemon: Daemon, msg_id: str) -> bool:
    assert daemon.store is not None
    msg = await daemon.store.get(msg_id)
    return msg is not None and msg.status.final
