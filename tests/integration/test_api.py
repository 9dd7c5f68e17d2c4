"""Black-box tests of the HTTP API against a real in-process daemon, simulator and SQLite file."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from dispatchd.daemon import Daemon
from tests.conftest import DaemonFactory, wait_for
from tests.helpers import INVALID_NUMBER, NO_REPORTS, NUMBER, OTHER_NUMBER, Json, call, url

PROBLEM = "application/problem+json"
NATIONAL = "(703) 457-3322"


async def send(
    http: aiohttp.ClientSession, d: Daemon, to: str = NUMBER, text: str = "hello"
) -> Json:
    status, body, _ = await call(
        http, "POST", d, "/messages", json={"to_number": to, "message": text}
    )
    assert status == 202, body
    return body


async def get(http: aiohttp.ClientSession, d: Daemon, msg_id: str) -> Json:
    status, body, _ = await call(http, "GET", d, f"/messages/{msg_id}")
    assert status == 200, body
    return body


async def wait_status(
    http: aiohttp.ClientSession, d: Daemon, msg_id: str, status: str, within: float = 5.0
) -> Json:
    seen: Json = {}

    async def reached() -> bool:
        seen.update(await get(http, d, msg_id))
        return bool(seen["status"] == status)

    await wait_for(reached, within=within, what=f"message {msg_id} to be {status}")
    return seen


async def sent_message(http: aiohttp.ClientSession, d: Daemon, to: str = NUMBER) -> Json:
    """A message accepted by a provider that will not report on it by itself."""
    msg = await send(http, d, to)
    return await wait_status(http, d, msg["id"], "sent")


def assert_problem(
    status: int, body: Json, headers: Any, expected_status: int, code: str | None = None
) -> None:
    assert status == expected_status, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == expected_status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"].rstrip().endswith(".")
    if code is not None:
        assert body["code"] == code
    else:
        assert isinstance(body["code"], str) and body["code"]


async def stored_ids(http: aiohttp.ClientSession, d: Daemon) -> list[str]:
    """Ids of every message the daemon holds, newest first."""
    status, body, _ = await call(http, "GET", d, "/messages", params={"limit": "500"})
    assert status == 200, body
    return [item["id"] for item in body["items"]]


def field_errors(body: Json) -> list[tuple[str, str]]:
    for error in body["errors"]:
        assert isinstance(error["message"], str) and error["message"]
    return [(e["field"], e["code"]) for e in body["errors"]]


def parse_time(value: str) -> datetime:
    assert value.endswith("Z")
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return parsed


# -- POST /messages -------------------------------------------------------------------------


async def test_post_returns_202_with_location_and_the_queued_resource(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    before = datetime.now(UTC)
    status, body, headers = await call(
        http, "POST", d, "/messages", json={"to_number": NATIONAL, "message": "Hello there"}
    )
    assert status == 202, body
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Location"] == f"/messages/{body['id']}"
    assert uuid.UUID(body["id"]).version == 7
    assert body["to_number"] == NUMBER
    assert body["message"] == "Hello there"
    assert body["status"] == "queued"
    assert body["segments"] == 1
    assert body["encoding"] == "GSM-7"
    assert body["provider"] is None
    assert body["provider_message_id"] is None
    assert body["error"] is None
    created = parse_time(body["created_at"])
    assert abs((created - before).total_seconds()) < 5
    assert parse_time(body["updated_at"]) >= created
    assert parse_time(body["next_attempt_at"]) >= created
    # The Location header leads to the same message.
    fetched = await get(http, d, body["id"])
    assert fetched["id"] == body["id"]
    assert fetched["to_number"] == NUMBER
    assert fetched["message"] == "Hello there"


async def test_ids_are_uuid7_and_sort_in_sending_order(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    ids = [(await send(http, d, text=f"m{i}"))["id"] for i in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    for msg_id in ids:
        parsed = uuid.UUID(msg_id)
        assert parsed.version == 7
        # The top 48 bits are the creation time in Unix milliseconds.
        assert abs((parsed.int >> 80) - time.time() * 1000) < 60_000


async def test_form_encoded_body_is_accepted(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    status, body, headers = await call(
        http, "POST", d, "/messages", data={"to_number": NATIONAL, "message": "from a form"}
    )
    assert status == 202, body
    assert body["to_number"] == NUMBER
    assert body["message"] == "from a form"
    assert headers["Location"] == f"/messages/{body['id']}"


@pytest.mark.parametrize(
    ("text", "segments", "encoding"),
    [
        ("a" * 160, 1, "GSM-7"),
        ("a" * 161, 2, "GSM-7"),
        ("a" * 1530, 10, "GSM-7"),
        ("Ж" * 70, 1, "UCS-2"),
        ("hi 👋", 1, "UCS-2"),
    ],
    ids=["160-gsm", "161-gsm", "1530-gsm", "70-cyrillic", "emoji"],
)
async def test_segments_and_encoding(
    start_daemon: DaemonFactory,
    http: aiohttp.ClientSession,
    text: str,
    segments: int,
    encoding: str,
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    body = await send(http, d, text=text)
    assert (body["segments"], body["encoding"]) == (segments, encoding)
    assert body["message"] == text


async def test_accepted_message_is_on_disk_before_the_202(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    body = await send(http, d, text="durable")
    path = d.config.storage.path
    query = "SELECT to_number, body, segments, encoding FROM messages WHERE id = ?"
    expected = (NUMBER, "durable", 1, "GSM-7")
    # Read by another connection straight after the 202, without yielding to the daemon.
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute(query, (body["id"],)).fetchone() == expected
    await d.stop()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute(query, (body["id"],)).fetchone() == expected


# -- POST /messages errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"to_number": "\xff\xfe", "message": "x"}', b"[]", b'"text"', b"42"],
    ids=["not-json", "invalid-utf8", "array", "string", "number"],
)
async def test_malformed_body_is_400(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession, raw: bytes
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    status, body, headers = await call(
        http, "POST", d, "/messages", data=raw, headers={"Content-Type": "application/json"}
    )
    assert_problem(status, body, headers, 400, "malformed_request")
    assert await stored_ids(http, d) == []


async def test_text_plain_is_415(start_daemon: DaemonFactory, http: aiohttp.ClientSession) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    status, body, headers = await call(
        http,
        "POST",
        d,
        "/messages",
        data=b'{"to_number": "+17034573322", "message": "hi"}',
        headers={"Content-Type": "text/plain"},
    )
    assert_problem(status, body, headers, 415)
    assert await stored_ids(http, d) == []


async def test_body_over_64_kib_is_413(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    status, body, headers = await call(
        http, "POST", d, "/messages", json={"to_number": NUMBER, "message": "a" * (64 * 1024)}
    )
    assert_problem(status, body, headers, 413)
    assert await stored_ids(http, d) == []


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({"message": "hi"}, [("to_number", "missing")]),
        ({"to_number": NUMBER}, [("message", "missing")]),
        ({"to_number": 123, "message": "hi"}, [("to_number", "not_a_string")]),
        ({"to_number": NUMBER, "message": 5}, [("message", "not_a_string")]),
        ({"to_number": "hello", "message": "hi"}, [("to_number", "unparseable")]),
        ({"to_number": "+1 555", "message": "hi"}, [("to_number", "invalid_number")]),
        ({"to_number": NUMBER, "message": ""}, [("message", "empty")]),
        ({"to_number": NUMBER, "message": " \t\n "}, [("message", "empty")]),
        ({"to_number": NUMBER, "message": "a" * 1531}, [("message", "too_long")]),
        (
            {"to_number": "hello", "message": ""},
            [("to_number", "unparseable"), ("message", "empty")],
        ),
    ],
    ids=[
        "missing-number",
        "missing-message",
        "number-not-string",
        "message-not-string",
        "unparseable-number",
        "invalid-number",
        "empty-message",
        "blank-message",
        "too-many-segments",
        "both-bad",
    ],
)
async def test_invalid_fields_are_422_with_field_errors(
    start_daemon: DaemonFactory,
    http: aiohttp.ClientSession,
    payload: Json,
    errors: list[tuple[str, str]],
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    status, body, headers = await call(http, "POST", d, "/messages", json=payload)
    assert_problem(status, body, headers, 422, "validation_failed")
    assert sorted(field_errors(body)) == sorted(errors)
    assert await stored_ids(http, d) == []


async def test_max_segments_counts_ucs2_and_gsm_units(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS, delivery={"max_segments": 1})
    assert (await send(http, d, text="Ж" * 70))["segments"] == 1
    assert (await send(http, d, text="a" * 160))["segments"] == 1
    for text in ("Ж" * 71, "a" * 161):
        status, body, headers = await call(
            http, "POST", d, "/messages", json={"to_number": NUMBER, "message": text}
        )
        assert_problem(status, body, headers, 422, "validation_failed")
        assert field_errors(body) == [("message", "too_long")]
    assert len(await stored_ids(http, d)) == 2


async def test_number_reported_invalid_is_suppressed(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon()
    first = await send(http, d, INVALID_NUMBER)
    done = await wait_status(http, d, first["id"], "invalid")
    assert done["error"]["code"] == "reported_invalid"
    # Refused however the number is written.
    for to in (INVALID_NUMBER, "(703) 457-0000"):
        status, body, headers = await call(
            http, "POST", d, "/messages", json={"to_number": to, "message": "again"}
        )
        assert_problem(status, body, headers, 422, "number_suppressed")
    # Other numbers are unaffected.
    await send(http, d, NUMBER)


async def test_queued_message_to_a_number_reported_invalid_is_never_sent(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    # Providers are down and the retry is a minute away, so messages stay queued.
    d = await start_daemon(
        simulator={"failure_rate": 1.0}, delivery={"backoff_initial": 60, "backoff_max": 60}
    )
    d.simulator.keep_received = True
    reported = await send(http, d, INVALID_NUMBER, "first")
    waiting = await send(http, d, INVALID_NUMBER, "second")

    async def both_retrying() -> bool:
        msgs = [await get(http, d, m["id"]) for m in (reported, waiting)]
        return all(m["status"] == "queued" and m["attempts"] for m in msgs)

    await wait_for(both_retrying, what="both messages to be queued for a retry")

    status, body, _ = await call(
        http,
        "POST",
        d,
        d.service.callback_url(reported["id"]).removeprefix(url(d, "")),
        json={"status": "invalid", "message_id": "provider-id-1"},
    )
    assert status == 204, body
    first = await get(http, d, reported["id"])
    assert first["status"] == "invalid"
    assert first["error"]["code"] == "reported_invalid"
    second = await get(http, d, waiting["id"])
    assert second["status"] == "invalid"
    assert second["error"]["code"] == "number_suppressed"
    assert second["provider_message_id"] is None
    assert second["next_attempt_at"] is None
    assert [h["status"] for h in second["history"]][-1] == "invalid"
    assert "sent" not in [h["status"] for h in second["history"]]
    assert all(a["outcome"] != "accepted" for a in second["attempts"])

    # With the providers back up, deliveries flow again, but nothing goes to that number.
    d.simulator.settings = d.simulator.settings.model_copy(update={"failure_rate": 0.0})
    control = await send(http, d, NUMBER, "control")
    await wait_status(http, d, control["id"], "delivered")
    assert [r["to_number"] for r in d.simulator.received] == [NUMBER]
    assert (await get(http, d, waiting["id"]))["status"] == "invalid"


# -- GET /messages/{id} ----------------------------------------------------------------------


async def test_delivered_message_shows_attempts_and_history_in_order(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon()
    msg = await send(http, d)
    done = await wait_status(http, d, msg["id"], "delivered")
    assert [h["status"] for h in done["history"]] == ["queued", "sending", "sent", "delivered"]
    times = [parse_time(h["at"]) for h in done["history"]]
    assert times == sorted(times)
    assert all(h["detail"] is None or isinstance(h["detail"], str) for h in done["history"])
    assert done["provider"] in ("provider1", "provider2")
    assert isinstance(done["provider_message_id"], str) and done["provider_message_id"]
    assert done["error"] is None
    assert done["next_attempt_at"] is None
    [attempt] = done["attempts"]
    assert attempt["provider"] == done["provider"]
    assert attempt["outcome"] == "accepted"
    assert attempt["http_status"] == 200
    assert isinstance(attempt["latency_ms"], int | float) and attempt["latency_ms"] >= 0
    assert attempt["error"] is None
    assert parse_time(attempt["started_at"]) >= parse_time(done["created_at"])


async def test_unknown_message_is_404(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    for msg_id in ("0190b5e4-0000-7000-8000-000000000000", "not-an-id"):
        status, body, headers = await call(http, "GET", d, f"/messages/{msg_id}")
        assert_problem(status, body, headers, 404)


# -- GET /messages ---------------------------------------------------------------------------


async def test_list_paginates_newest_first_without_gaps_or_repeats(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    sent = [(await send(http, d, text=f"message {i}"))["id"] for i in range(7)]
    seen: list[str] = []
    pages: list[int] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3"} if cursor is None else {"limit": "3", "cursor": cursor}
        status, body, _ = await call(http, "GET", d, "/messages", params=params)
        assert status == 200, body
        pages.append(len(body["items"]))
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 5, "pagination does not end"
    assert pages == [3, 3, 1]
    assert seen == list(reversed(sent))


async def test_list_filters_by_number_and_status(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon()
    mine = [await send(http, d, NUMBER, f"mine {i}") for i in range(2)]
    other = await send(http, d, OTHER_NUMBER, "other")
    bad = await send(http, d, INVALID_NUMBER, "bad")
    for m in (*mine, other):
        await wait_status(http, d, m["id"], "delivered")
    await wait_status(http, d, bad["id"], "invalid")

    async def ids(**params: str) -> list[str]:
        status, body, _ = await call(http, "GET", d, "/messages", params=params)
        assert status == 200, body
        assert body["next_cursor"] is None
        return [item["id"] for item in body["items"]]

    assert await ids(to_number=NATIONAL) == [mine[1]["id"], mine[0]["id"]]
    assert await ids(status="invalid") == [bad["id"]]
    assert await ids(status="delivered") == [other["id"], mine[1]["id"], mine[0]["id"]]
    assert await ids(to_number=OTHER_NUMBER, status="delivered") == [other["id"]]
    assert await ids(to_number=NATIONAL, status="invalid") == []
    assert await ids() == [bad["id"], other["id"], mine[1]["id"], mine[0]["id"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"status": "bogus"}, "status"), ({"limit": "0"}, "limit"), ({"limit": "abc"}, "limit")],
    ids=["bad-status", "zero-limit", "non-numeric-limit"],
)
async def test_list_rejects_bad_parameters(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession, params: dict[str, str], field: str
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    status, body, headers = await call(http, "GET", d, "/messages", params=params)
    assert_problem(status, body, headers, 422, "validation_failed")
    assert [f for f, _ in field_errors(body)] == [field]


# -- delivery reports ------------------------------------------------------------------------


def report_path(d: Daemon, msg_id: str, token: str | None = "valid") -> str:
    if token == "valid":
        token = d.service.token(msg_id)
    query = "" if token is None else f"?token={token}"
    return f"/messages/{msg_id}/delivery_status{query}"


async def test_report_on_per_message_url_is_applied(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    msg = await sent_message(http, d)
    assert msg["provider_message_id"]
    status, body, _ = await call(
        http,
        "POST",
        d,
        report_path(d, msg["id"]),
        json={"status": "delivered", "message_id": msg["provider_message_id"]},
    )
    assert (status, body) == (204, {})
    after = await get(http, d, msg["id"])
    assert after["status"] == "delivered"
    assert [h["status"] for h in after["history"]] == ["queued", "sending", "sent", "delivered"]


async def test_report_on_seed_url_matches_provider_message_id(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    msg = await sent_message(http, d)
    other = await sent_message(http, d, OTHER_NUMBER)
    status, body, _ = await call(
        http,
        "POST",
        d,
        f"/messages/delivery_status?token={d.service.token(msg['id'])}",
        json={"status": "failed", "message_id": msg["provider_message_id"]},
    )
    assert (status, body) == (204, {})
    after = await get(http, d, msg["id"])
    assert after["status"] == "failed"
    assert after["error"]["code"] == "reported_failed"
    assert (await get(http, d, other["id"]))["status"] == "sent"


async def test_duplicate_and_late_reports_never_change_a_final_status(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    msg = await sent_message(http, d)
    pmid = msg["provider_message_id"]
    for report in ("delivered", "delivered", "failed", "invalid"):
        status, body, _ = await call(
            http, "POST", d, report_path(d, msg["id"]), json={"status": report, "message_id": pmid}
        )
        assert (status, body) == (204, {})
    after = await get(http, d, msg["id"])
    assert after["status"] == "delivered"
    assert after["error"] is None
    history = after["history"]
    assert [h["status"] for h in history] == [
        "queued",
        "sending",
        "sent",
        "delivered",
        "delivered",
        "delivered",
        "delivered",
    ]
    # The ignored reports are recorded with what they said.
    assert "failed" in history[-2]["detail"]
    assert "invalid" in history[-1]["detail"]
    # The number was not suppressed by the ignored "invalid" report.
    await send(http, d, NUMBER)


@pytest.mark.parametrize(
    "token", [None, "", "0" * 32, "other-message"], ids=["missing", "empty", "wrong", "other-msg"]
)
async def test_report_with_bad_token_is_401_and_changes_nothing(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession, token: str | None
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    msg = await sent_message(http, d)
    if token == "other-message":
        token = d.service.token((await send(http, d, OTHER_NUMBER))["id"])
    report = {"status": "failed", "message_id": msg["provider_message_id"]}
    seed_path = "/messages/delivery_status" + ("" if token is None else f"?token={token}")
    for path in (report_path(d, msg["id"], token), seed_path):
        status, body, headers = await call(http, "POST", d, path, json=report)
        assert_problem(status, body, headers, 401)
    after = await get(http, d, msg["id"])
    assert after["status"] == "sent"
    assert after["history"] == msg["history"]


async def test_report_for_unknown_message_is_404(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    unknown = str(uuid.UUID(int=7 << 76 | 2 << 62))
    report = {"status": "delivered", "message_id": "nobody-knows-this"}
    status, body, headers = await call(http, "POST", d, report_path(d, unknown), json=report)
    assert_problem(status, body, headers, 404)
    status, body, headers = await call(
        http, "POST", d, f"/messages/delivery_status?token={d.service.token(unknown)}", json=report
    )
    assert_problem(status, body, headers, 404)


@pytest.mark.parametrize(
    ("report", "field"),
    [
        ({"message_id": "x"}, "status"),
        ({"status": "delivered"}, "message_id"),
        ({"status": "sent", "message_id": "x"}, "status"),
        ({"status": "queued", "message_id": "x"}, "status"),
        ({"status": "bogus", "message_id": "x"}, "status"),
    ],
    ids=["missing-status", "missing-message-id", "sent", "queued", "bogus"],
)
async def test_report_with_bad_fields_is_422_and_changes_nothing(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession, report: Json, field: str
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    msg = await sent_message(http, d)
    status, body, headers = await call(http, "POST", d, report_path(d, msg["id"]), json=report)
    assert_problem(status, body, headers, 422, "validation_failed")
    assert [f for f, _ in field_errors(body)] == [field]
    after = await get(http, d, msg["id"])
    assert after["status"] == "sent"
    assert after["history"] == msg["history"]


async def test_report_with_malformed_body_is_400(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    msg = await sent_message(http, d)
    for path in (report_path(d, msg["id"]), "/messages/delivery_status?token=x"):
        status, body, headers = await call(
            http, "POST", d, path, data=b"{oops", headers={"Content-Type": "application/json"}
        )
        assert_problem(status, body, headers, 400, "malformed_request")
    assert (await get(http, d, msg["id"]))["status"] == "sent"


# -- health and routing ----------------------------------------------------------------------


async def test_health_and_readiness(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    for path in ("/healthz", "/readyz"):
        status, body, _ = await call(http, "GET", d, path)
        assert status == 200, body


async def test_unknown_route_and_wrong_method_are_problems(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    status, body, headers = await call(http, "GET", d, "/nope")
    assert_problem(status, body, headers, 404)
    status, body, headers = await call(http, "DELETE", d, "/messages")
    assert_problem(status, body, headers, 405)
    assert {"GET", "POST"} <= {m.strip() for m in headers["Allow"].split(",")}
