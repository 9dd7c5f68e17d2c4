"""Report timeout and retention through the real daemon: a sent message whose report never
comes ends `unknown` (and a late report does not change it); final messages older than the
retention are purged, with the metric and the log line, while suppressions stay."""

from __future__ import annotations

import logging
import time

import aiohttp
import pytest

from dispatchd.client import Client
from dispatchd.daemon import Daemon
from dispatchd.domain.models import Status
from dispatchd.retention import Retention
from tests.conftest import DaemonFactory, wait_for
from tests.helpers import NUMBER, OTHER_NUMBER, call, hold
from tests.integration.test_metrics import scrape, value

pytestmark = pytest.mark.slow  # each waits out a timeout or a retention of seconds


async def send(http: aiohttp.ClientSession, d: Daemon, to: str = NUMBER) -> str:
    status, resp, _ = await call(
        http, "POST", d, "/messages", json={"to_number": to, "message": "hi"}
    )
    assert status == 202, resp
    return str(resp["id"])


async def test_a_sent_message_without_a_report_ends_unknown_and_stays_so(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    # The provider takes the message at once and reports it delivered only after 3 s.
    d = await start_daemon(delivery={"report_timeout": 1}, simulator={"callback_delay": 3})
    msg_id = await send(http, d)
    async with Client(f"http://127.0.0.1:{d.port}") as client:
        stream = [e.status async for e in client.events(msg_id)]  # ends at the final one
    assert stream == [Status.QUEUED, Status.SENDING, Status.SENT, Status.UNKNOWN]

    status, body, _ = await call(http, "GET", d, f"/messages/{msg_id}")
    assert status == 200 and body["status"] == "unknown"
    assert body["error"]["code"] == "report_timeout"
    unknown_at = next(h["at"] for h in body["history"] if h["status"] == "unknown")
    sent_at = next(h["at"] for h in body["history"] if h["status"] == "sent")
    assert sent_at < unknown_at
    assert [e.type for e in d.events.recent() if e.payload.get("id") == msg_id][-1] == "unknown"

    _, listed, _ = await call(http, "GET", d, "/messages?status=unknown")
    assert [m["id"] for m in listed["items"]] == [msg_id]
    assert value(await scrape(http, d), "dispatchd_messages", status="unknown") == 1

    async def late_report_recorded() -> bool:
        history = await d.store.message_history(msg_id)
        return any("ignored" in (h.detail or "") for h in history)

    await wait_for(late_report_recorded, within=10, what="the late report in the history")
    assert await d.store.message_status(msg_id) is Status.UNKNOWN


async def test_report_timeout_zero_waits_forever(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(delivery={"report_timeout": 0}, simulator={"callback_delay": 3600})
    msg_id = await send(http, d)

    async def sent() -> bool:
        return await d.store.message_status(msg_id) is Status.SENT

    await wait_for(sent, what="the message to be sent")
    assert await d.worker.time_out_reports() == 0
    assert await d.store.message_status(msg_id) is Status.SENT


async def test_retention_purges_final_messages_and_keeps_suppressions(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatchd.retention")
    d = await start_daemon(storage={"retention": 1})
    delivered = await send(http, d)
    invalid = await send(http, d, "+17034570000")  # the simulator reports it invalid

    async def purged() -> bool:
        gone = [await d.store.get(i) is None for i in (delivered, invalid)]
        return all(gone)

    await wait_for(purged, within=15, interval=0.1, what="both messages purged")
    for msg_id in (delivered, invalid):
        status, body, _ = await call(http, "GET", d, f"/messages/{msg_id}")
        assert status == 404 and body["code"] == "message_not_found"
    # The number reported invalid is still refused.
    status, body, _ = await call(
        http, "POST", d, "/messages", json={"to_number": "+17034570000", "message": "hi"}
    )
    assert status == 422 and body["code"] == "number_suppressed"
    samples = await scrape(http, d)
    assert value(samples, "dispatchd_retention_deleted_rows_total", table="messages") >= 2
    # queued, sending, (sent,) final: `sent` is missing when the report beat the answer.
    assert value(samples, "dispatchd_retention_deleted_rows_total", table="history") >= 6
    assert any("event=retention_purge" in r.getMessage() for r in caplog.records)


async def test_retention_keeps_what_is_not_final(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(delivery={"report_timeout": 0}, simulator={"callback_delay": 3600})
    waiting = await send(http, d, OTHER_NUMBER)

    async def sent() -> bool:
        return await d.store.message_status(waiting) is Status.SENT

    await wait_for(sent, what="the message to be sent")
    hold(d)
    queued = await send(http, d)
    # A purge as if a day had passed: neither message is final, so both stay.
    later = Retention(d.store, 3600, metrics=d.metrics, clock=lambda: time.time() + 86_400)
    assert (await later.purge()).messages == 0
    assert await d.store.message_status(waiting) is Status.SENT
    assert await d.store.message_status(queued) is Status.QUEUED


async def test_openapi_documents_the_unknown_status(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    status, doc, _ = await call(http, "GET", daemon, "/openapi.json")
    assert status == 200
    schema = doc["components"]["schemas"]["MessageStatus"]
    assert "unknown" in schema["enum"] and "report_timeout" in schema["description"]
