"""`dispatchd send` and `dispatchd status` against a real daemon, run as the operator would.

`cli.main` runs its own event loop, so each call runs in a thread with stdout and stderr
redirected; the daemon keeps serving on the test's loop meanwhile.
"""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from dispatchd import cli
from dispatchd.daemon import Daemon
from dispatchd.domain.models import Status
from tests.conftest import DaemonFactory, free_port, wait_for
from tests.helpers import INVALID_NUMBER, NO_REPORTS, NUMBER, OTHER_NUMBER, call, hold, url

KEY = "operator-key"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


async def dispatchd(*argv: str) -> Run:
    """`dispatchd ARGV...` in a thread, as its exit status and output."""

    def run() -> Run:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(list(argv))
        return Run(code, out.getvalue(), err.getvalue())

    result = await asyncio.to_thread(run)
    # Whatever went wrong, the operator reads a sentence, never a traceback.
    assert "Traceback" not in result.err
    return result


@pytest.fixture
async def daemon(start_daemon: DaemonFactory, short_tmp: Path) -> Daemon:
    return await start_daemon(control={"socket": str(short_tmp / "c.sock")})


def api(d: Daemon) -> str:
    return url(d, "")


async def test_send_prints_the_id_of_the_accepted_message(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    run = await dispatchd("send", "--url", api(daemon), NUMBER, "smoke test")
    assert run.code == 0, run.err
    msg_id = run.out.strip()
    status, body, _ = await call(http, "GET", daemon, f"/messages/{msg_id}")
    assert status == 200
    assert body["to_number"] == NUMBER and body["message"] == "smoke test"


async def test_send_wait_follows_the_message_to_delivered(daemon: Daemon) -> None:
    run = await dispatchd("send", "--wait", "--url", api(daemon), NUMBER, "after deploy")
    assert run.code == 0, run.err
    msg_id, *statuses = run.out.split()
    assert statuses == ["queued", "sending", "sent", "delivered"]
    assert await daemon.store.message_status(msg_id) is Status.DELIVERED


async def test_send_wait_fails_for_a_number_reported_invalid(daemon: Daemon) -> None:
    run = await dispatchd("send", "--wait", "--url", api(daemon), INVALID_NUMBER, "hi")
    assert run.code == 1
    msg_id, *statuses = run.out.split()
    assert statuses[-1] == "invalid"
    assert await daemon.store.message_status(msg_id) is Status.INVALID
    assert f"{msg_id} ended invalid: reported_invalid" in run.err


async def test_send_wait_gives_up_after_its_timeout(start_daemon: DaemonFactory) -> None:
    d = await start_daemon(simulator=NO_REPORTS)
    run = await dispatchd("send", "--wait", "--timeout", "0.3", "--url", api(d), NUMBER, "hi")
    assert run.code == cli.EXIT_TEMPFAIL == 75
    msg_id, *statuses = run.out.split()
    assert statuses[-1] == "sent"
    assert f"{msg_id} is still sent after 0.3s" in run.err


async def test_a_bad_number_prints_the_problem_detail(daemon: Daemon) -> None:
    run = await dispatchd("send", "--url", api(daemon), "12", "hi")
    assert run.code == cli.EXIT_DATAERR == 65
    assert run.out == ""
    assert "refused (422 validation_failed)" in run.err
    assert "'12' is not a valid phone number" in run.err


async def test_a_suppressed_number_is_refused(daemon: Daemon) -> None:
    first = await dispatchd("send", "--wait", "--url", api(daemon), INVALID_NUMBER, "hi")
    assert first.code == 1
    again = await dispatchd("send", "--url", api(daemon), INVALID_NUMBER, "again")
    assert again.code == 65
    assert "number_suppressed" in again.err and "reported invalid" in again.err


async def test_the_api_key_comes_from_the_environment_and_a_wrong_one_is_refused(
    start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await start_daemon(api={"keys": [KEY]})
    monkeypatch.setenv("DISPATCHD_API_KEY", KEY)
    run = await dispatchd("send", "--wait", "--url", api(d), NUMBER, "hi")
    assert run.code == 0, run.err
    wrong = await dispatchd("send", "--url", api(d), "--api-key", "wrong-key", NUMBER, "hi")
    assert wrong.code == cli.EXIT_NOPERM == 77
    assert "401" in wrong.err and "wrong-key" not in wrong.err + wrong.out


async def test_send_to_an_unreachable_daemon_exits_69() -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    run = await dispatchd("send", "--url", unreachable, NUMBER, "hi")
    assert run.code == cli.EXIT_UNAVAILABLE == 69
    assert (
        run.err.strip()
        == f"dispatchd: cannot reach the daemon at {unreachable}: Connection refused"
    )


async def test_the_config_says_where_the_daemon_is(daemon: Daemon, tmp_path: Path) -> None:
    # A wildcard listener is reached on loopback.
    config = tmp_path / "operator.toml"
    config.write_text(
        f'[server]\nhost = "0.0.0.0"\nport = {daemon.port}\n'
        f'[control]\nsocket = "{daemon.config.control_socket}"\n'
    )
    sent = await dispatchd("send", "--config", str(config), NUMBER, "hi")
    assert sent.code == 0, sent.err
    assert await daemon.store.get(sent.out.strip()) is not None
    status = await dispatchd("status", "--config", str(config))
    assert status.code == 0, status.err
    assert "provider1" in status.out


async def test_status_summarises_providers_and_queue(daemon: Daemon) -> None:
    for number in (NUMBER, OTHER_NUMBER):
        assert (await dispatchd("send", "--wait", "--url", api(daemon), number, "hi")).code == 0
    hold(daemon)
    queued = await dispatchd("send", "--url", api(daemon), NUMBER, "held")
    assert queued.code == 0

    async def counted() -> bool:
        return await daemon.store.message_status(queued.out.strip()) is Status.QUEUED

    await wait_for(counted, what="the held message to be queued")
    # Close the current one-second rate sample now rather than wait for the tick.
    daemon.events.roll_rates()
    run = await dispatchd("status", "--socket", str(daemon.config.control_socket))
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith("dispatchd pid ")
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("provider")}
    assert rows["provider1"][1] == rows["provider2"][1] == "paused"
    header = next(i for i, line in enumerate(lines) if line.startswith("queue "))
    counts = dict(zip(lines[header].split()[1:], lines[header + 1].split(), strict=True))
    assert counts["queued"] == "1" and counts["delivered"] == "2"
    assert set(counts) == {s.value for s in Status}
    rates = next(i for i, line in enumerate(lines) if line.startswith("per second "))
    series = lines[rates].split()[2:]
    last_10s = dict(zip(series, lines[rates + 1].split()[2:], strict=True))
    assert float(last_10s["accepted"]) > 0 and float(last_10s["delivered"]) > 0
    assert max(map(len, lines)) <= 80


async def test_status_json_is_the_snapshot(daemon: Daemon) -> None:
    run = await dispatchd("status", "--json", "--socket", str(daemon.config.control_socket))
    assert run.code == 0, run.err
    snapshot = json.loads(run.out)
    assert [p["name"] for p in snapshot["providers"]] == ["provider1", "provider2"]
    assert snapshot["queue"]["counts"]["queued"] == 0


async def test_status_without_a_daemon_exits_69_naming_the_socket(short_tmp: Path) -> None:
    missing = short_tmp / "none.sock"
    run = await dispatchd("status", "--socket", str(missing))
    assert run.code == cli.EXIT_UNAVAILABLE
    assert run.out == ""
    assert (
        run.err.strip() == f"dispatchd: no daemon answers on {missing}: No such file or directory"
    )
