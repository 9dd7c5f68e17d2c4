"""Per-message options on POST /messages: send_at, validity_period, smart_encoding and
status_callback_url, against a real daemon, simulator and SQLite file."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatchd import config as config_mod
from dispatchd.daemon import Daemon
from dispatchd.domain.errors import ConfigError
from tests.conftest import DaemonFactory, wait_for
from tests.helpers import NO_REPORTS, NUMBER, Json

CURLY = "\u201cDon\u2019t\u201d \u2014 wait\u2026"
PLAIN = '"Don\'t" - wait...'
HOOK = "http://127.0.0.1:9/sms/status"  # the discard port: nothing listens there


async def post(
    http: aiohttp.ClientSession, d: Daemon, body: Json, *, form: bool = False
) -> tuple[int, Json]:
    payload: Json = {"data": body} if form else {"json": body}
    async with http.post(f"http://127.0.0.1:{d.port}/messages", **payload) as resp:
        return resp.status, await resp.json(content_type=None)


async def fetch(http: aiohttp.ClientSession, d: Daemon, msg_id: str) -> Json:
    async with http.get(f"http://127.0.0.1:{d.port}/messages/{msg_id}") as resp:
        assert resp.status == 200
        body: Json = await resp.json()
        return body


async def accepted(http: aiohttp.ClientSession, d: Daemon, **fields: Any) -> Json:
    status, body = await post(http, d, {"to_number": NUMBER, "message": "hi", **fields})
    assert status == 202, body
    return body


async def refused(http: aiohttp.ClientSession, d: Daemon, **fields: Any) -> set[tuple[str, str]]:
    """The (field, code) pairs of the 422 a send with these fields gets."""
    status, body = await post(http, d, {"to_number": NUMBER, "message": "hi", **fields})
    assert status == 422, body
    assert body["code"] == "validation_failed"
    for error in body["errors"]:
        assert error["message"].endswith("."), error
    return {(e["field"], e["code"]) for e in body["errors"]}


def at(value: str) -> float:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value).timestamp()


def rfc3339(ts: float, offset_hours: int = 0) -> str:
    return datetime.fromtimestamp(ts, timezone(timedelta(hours=offset_hours))).isoformat()


async def status_of(http: aiohttp.ClientSession, d: Daemon, msg_id: str) -> str:
    return str((await fetch(http, d, msg_id))["status"])


# -- send_at ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_scheduled_message_waits_for_send_at_then_goes(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    when = time.time() + 1.0
    # Written with a +02:00 offset: the resource shows the same instant in UTC.
    msg = await accepted(http, d, send_at=rfc3339(when, offset_hours=2))
    assert msg["status"] == "queued"
    assert at(msg["send_at"]) == pytest.approx(when, abs=0.001)
    assert at(msg["next_attempt_at"]) == pytest.approx(when, abs=0.001)
    # Valid for max_age (3600 s) from send_at, not from acceptance.
    assert at(msg["expires_at"]) == pytest.approx(when + 3600, abs=0.001)
    now = await accepted(http, d)
    await wait_for(lambda: _is(http, d, now["id"], "sent"), what="the unscheduled message")
    assert await status_of(http, d, msg["id"]) == "queued"  # still waiting for its time
    await wait_for(lambda: _is(http, d, msg["id"], "sent"), within=5, what="scheduled send")
    detail = await fetch(http, d, msg["id"])
    assert at(detail["attempts"][0]["started_at"]) >= when - 0.001


async def _is(http: aiohttp.ClientSession, d: Daemon, msg_id: str, status: str) -> bool:
    return await status_of(http, d, msg_id) == status


async def test_send_at_in_the_past_sends_at_once(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    past = time.time() - 3600
    msg = await accepted(http, d, send_at=rfc3339(past))
    assert at(msg["send_at"]) == pytest.approx(past, abs=0.001)
    assert at(msg["next_attempt_at"]) == pytest.approx(at(msg["created_at"]), abs=0.001)
    await wait_for(lambda: _is(http, d, msg["id"], "sent"), what="an overdue message sent")


async def test_bad_send_at_values_get_field_errors(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    cases = {
        rfc3339(time.time() + 36 * 86_400): "out_of_range",
        "2025-01-31T09:00:00": "no_timezone",
        "2025-01-31T09:00": "no_timezone",
        "2025-02-30T09:00:00Z": "unparseable",
        "tomorrow at nine": "unparseable",
        "2025-01-31": "unparseable",
        "\u0662025-01-31T09:00:00Z": "unparseable",  # an Arabic-Indic digit
        1738314000: "not_a_string",
    }
    for value, code in cases.items():
        assert await refused(http, d, send_at=value) == {("send_at", code)}, value
    # 35 days ahead is still fine.
    await accepted(http, d, send_at=rfc3339(time.time() + 35 * 86_400 - 60))


# -- validity_period --------------------------------------------------------------------------


@pytest.mark.slow
async def test_validity_period_sets_expiry_and_an_unsent_message_expires_then(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    # Every provider down and a long backoff: the retry is only due after the message expired.
    d = await start_daemon(
        simulator={"down": True}, delivery={"backoff_initial": 60.0, "backoff_max": 60.0}
    )
    msg = await accepted(http, d, validity_period=0.5)
    assert msg["validity_period"] == 0.5
    assert at(msg["expires_at"]) == pytest.approx(at(msg["created_at"]) + 0.5, abs=0.001)
    lasting = await accepted(http, d)
    assert lasting["validity_period"] is None
    assert at(lasting["expires_at"]) == pytest.approx(at(lasting["created_at"]) + 3600, abs=0.01)
    await wait_for(lambda: _is(http, d, msg["id"], "expired"), within=5, what="expiry")
    assert (await fetch(http, d, msg["id"]))["error"]["code"] == "expired"
    assert await status_of(http, d, lasting["id"]) == "queued"  # waits for its retry


async def test_validity_counts_from_send_at(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    when = time.time() + 600
    msg = await accepted(http, d, send_at=rfc3339(when), validity_period=120)
    assert at(msg["expires_at"]) == pytest.approx(when + 120, abs=0.001)


async def test_bad_validity_periods_get_field_errors(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    cases: list[tuple[Any, str]] = [
        (0, "out_of_range"),
        (-5, "out_of_range"),
        (30 * 86_400 + 1, "out_of_range"),
        ("60", "not_a_number"),
        (True, "not_a_number"),
        ([60], "not_a_number"),
    ]
    for value, code in cases:
        assert await refused(http, d, validity_period=value) == {("validity_period", code)}
    assert (await accepted(http, d, validity_period=30 * 86_400))["validity_period"] == 2_592_000
    # JSON allows numbers too big for a float: they read as infinity, which is out of range.
    for huge in (b"1e400", b"1" + b"0" * 400):
        raw = b'{"to_number": "+17034573322", "message": "hi", "validity_period": ' + huge + b"}"
        async with http.post(
            f"http://127.0.0.1:{d.port}/messages",
            data=raw,
            headers={"Content-Type": "application/json"},
        ) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 422, body
            assert body["errors"][0]["code"] == "out_of_range"


async def test_a_form_sends_numbers_and_flags_as_text(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    form = {"to_number": NUMBER, "message": CURLY, "validity_period": "90.5"}
    status, body = await post(http, d, {**form, "smart_encoding": "true"}, form=True)
    assert status == 202, body
    assert (body["validity_period"], body["message"], body["encoding"]) == (90.5, PLAIN, "GSM-7")
    status, body = await post(
        http, d, {**form, "smart_encoding": "yes", "validity_period": "1e3"}, form=True
    )
    assert status == 422, body
    assert {(e["field"], e["code"]) for e in body["errors"]} == {
        ("smart_encoding", "not_a_boolean"),
        ("validity_period", "not_a_number"),
    }


# -- smart_encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("configured", [False, True], ids=["config-off", "config-on"])
async def test_smart_encoding_per_message_beats_the_config(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession, configured: bool
) -> None:
    d = await start_daemon(simulator=NO_REPORTS, delivery={"smart_encoding": configured})
    d.simulator.keep_received = True
    default = await accepted(http, d, message=CURLY)
    on = await accepted(http, d, message=CURLY, smart_encoding=True)
    off = await accepted(http, d, message=CURLY, smart_encoding=False)
    assert (on["message"], on["encoding"]) == (PLAIN, "GSM-7")
    assert (off["message"], off["encoding"]) == (CURLY, "UCS-2")
    assert (default["message"], default["encoding"]) == (
        (PLAIN, "GSM-7") if configured else (CURLY, "UCS-2")
    )
    # The stored text is the final text, and that is what the provider gets.
    assert (await fetch(http, d, on["id"]))["message"] == PLAIN
    for msg in (default, on, off):
        await wait_for(lambda m=msg: _is(http, d, m["id"], "sent"), what="every message sent")
    assert sorted(r["message"] for r in d.simulator.received) == sorted(
        m["message"] for m in (default, on, off)
    )


async def test_smart_encoding_must_be_a_boolean_and_can_leave_nothing(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    assert await refused(http, d, smart_encoding="true") == {("smart_encoding", "not_a_boolean")}
    assert await refused(http, d, smart_encoding=1) == {("smart_encoding", "not_a_boolean")}
    # Only a zero-width space and a no-break space: nothing is left to send.
    assert await refused(http, d, message="\u200b\u00a0", smart_encoding=True) == {
        ("message", "empty")
    }


# -- status_callback_url ----------------------------------------------------------------------


async def test_callback_urls_are_refused_without_a_signing_secret(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    status, body = await post(
        http, d, {"to_number": NUMBER, "message": "hi", "status_callback_url": HOOK}
    )
    assert status == 422, body
    [error] = body["errors"]
    assert (error["field"], error["code"]) == ("status_callback_url", "callbacks_disabled")
    assert "cannot sign" in error["message"]
    assert (await accepted(http, d))["status_callback_url"] is None


async def test_callback_url_is_stored_and_the_default_applies(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    default = "http://127.0.0.1:9/default"
    webhooks = {"secret": "s3", "default_url": default, "allow_private_addresses": True}
    d = await start_daemon(simulator=NO_REPORTS, webhooks=webhooks)
    own = await accepted(http, d, status_callback_url=HOOK)
    assert own["status_callback_url"] == HOOK
    assert (await fetch(http, d, own["id"]))["status_callback_url"] == HOOK
    assert (await accepted(http, d))["status_callback_url"] == default
    cases: list[tuple[Any, str]] = [
        ("ftp://example.com/x", "invalid_url"),
        ("https:///no-host", "invalid_url"),
        ("example.com/hook", "invalid_url"),
        ("http://example.com:99999/", "invalid_url"),
        ("http://exa mple.com/", "invalid_url"),
        ("http://example.com/" + "a" * 2048, "too_long"),
        (42, "not_a_string"),
    ]
    for value, code in cases:
        assert await refused(http, d, status_callback_url=value) == {
            ("status_callback_url", code)
        }, value


def test_a_default_callback_url_without_a_secret_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "dispatchd.toml"
    path.write_text('[webhooks]\ndefault_url = "https://app.example.com/sms"\n')
    with pytest.raises(ConfigError, match=r"webhooks.*default_url.*secret"):
        config_mod.load(path)
    path.write_text('[webhooks]\ndefault_url = "https://app.example.com/sms"\nsecret = "k"\n')
    assert config_mod.load(path).webhooks.default_url == "https://app.example.com/sms"


# -- everything at once -----------------------------------------------------------------------


async def test_every_bad_option_is_listed_and_unknown_fields_are_ignored(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    assert await refused(
        http,
        d,
        to_number="12",
        send_at="soon",
        validity_period=-1,
        smart_encoding="on",
        status_callback_url=HOOK,
    ) == {
        ("to_number", "invalid_number"),
        ("send_at", "unparseable"),
        ("validity_period", "out_of_range"),
        ("smart_encoding", "not_a_boolean"),
        ("status_callback_url", "callbacks_disabled"),
    }
    status, body = await post(http, d, {"to_number": NUMBER, "message": "hi", "colour": "red"})
    assert status == 202, body
    assert "colour" not in body
    # Absent and null options are the same: the defaults.
    msg = await accepted(http, d, send_at=None, validity_period=None, smart_encoding=None)
    assert (msg["send_at"], msg["validity_period"], msg["status_callback_url"]) == (
        None,
        None,
        None,
    )
