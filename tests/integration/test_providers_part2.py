"""Part 2's kinds end to end through the in-process daemon, against its own simulator.

For each kind: the message goes in through the API, out through the kind's request to the
simulator's dialect (which checks the credentials as the provider does), and comes back
delivered (or invalid) through the dialect's own report format, signed where the provider
signs. Forged reports to a signing kind's route change nothing. Failover runs from a part-2
kind to Twilio and back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dispatchd.config import Config
from dispatchd.daemon import Daemon
from dispatchd.devtools.simulator_telnyx import DEV_PUBLIC_KEY
from dispatchd.domain.models import Message, Status
from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.helpers import INVALID_NUMBER, NUMBER, Json, call

TWILIO_SID = "AC00000000000000000000000000000001"
SENDER = "+15005550006"
# The Vonage application's private key, made once for the module (2048 bits: what Vonage issues).
APP_KEY = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode("ascii")
)
QUIET = {"throttle_rate": 0.0, "hang_rate": 0.0, "malformed_rate": 0.0, "callback_retry_for": 2}


def plivo(base: str) -> Json:
    return {
        "kind": "plivo",
        "url": f"{base}/simulator/plivo",
        "auth_id": "MAXXXXXXXXXXXXXXXXXX",
        "auth_token": "dev-only-plivo-token",
        "from": SENDER,
    }


def sinch(base: str) -> Json:
    return {
        "kind": "sinch",
        "url": f"{base}/simulator/sinch",
        "service_plan_id": "plan-1",
        "api_token": "dev-only-sinch-token",
        "from": SENDER,
    }


def infobip(base: str) -> Json:
    return {
        "kind": "infobip",
        "url": f"{base}/simulator/infobip",
        "api_key": "dev-only-infobip-key",
        "from": SENDER,
    }


def telnyx(base: str) -> Json:
    return {
        "kind": "telnyx",
        "url": f"{base}/simulator/telnyx",
        "api_key": "dev-only-telnyx-key",
        "public_key": DEV_PUBLIC_KEY,
        "from": SENDER,
    }


def vonage(base: str) -> Json:
    return {
        "kind": "vonage",
        "url": f"{base}/simulator/vonage",
        "application_id": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
        "private_key": APP_KEY,
        "signature_secret": "dev-only-vonage-signature-secret",
        "from": "DISPATCHD",
    }


def twilio(base: str) -> Json:
    return {
        "name": "twilio",
        "kind": "twilio",
        "url": f"{base}/simulator/twilio",
        "account_sid": TWILIO_SID,
        "auth_token": "dev-only-twilio-token",
        "from": SENDER,
    }


# kind -> (its provider entry, the raw status its report of a delivery says)
KINDS: dict[str, tuple[Callable[[str], Json], str]] = {
    "plivo": (plivo, "delivered"),
    "sinch": (sinch, "Delivered"),
    "infobip": (infobip, "DELIVERED_TO_HANDSET"),
    "telnyx": (telnyx, "delivered"),
    "vonage": (vonage, "delivered"),
}
# Kinds that sign their reports: a forged one gets 403.
SIGNING = {"plivo", "telnyx", "vonage"}


def config_for(tmp_path: Path, kind: str, *, with_twilio: bool = False) -> Config:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    entry = {"name": kind, "weight": 1, **KINDS[kind][0](base)}
    providers = [entry]
    if with_twilio:
        providers.append({**twilio(base), "weight": 0})
    return make_config(tmp_path, port, providers=providers, simulator=QUIET)


async def send(http: aiohttp.ClientSession, d: Daemon, to: str = NUMBER) -> str:
    status, body, _ = await call(
        http, "POST", d, "/messages", json={"to_number": to, "message": "hi"}
    )
    assert status == 202, body
    return str(body["id"])


async def final(d: Daemon, msg_id: str) -> Message:
    async def done() -> bool:
        msg = await d.store.get(msg_id)
        return msg is not None and msg.status.final

    await wait_for(done, what=f"{msg_id} to end")
    msg = await d.store.get(msg_id)
    assert msg is not None
    return msg


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_a_message_is_sent_reported_and_delivered(
    tmp_path: Path, start_daemon: DaemonFactory, http: aiohttp.ClientSession, kind: str
) -> None:
    d = await start_daemon(config_for(tmp_path, kind))
    msg = await final(d, await send(http, d))
    assert (msg.status, msg.provider) == (Status.DELIVERED, kind)
    assert msg.provider_message_id
    said = KINDS[kind][1]
    assert any(
        h.status is Status.DELIVERED and f"from {kind}: {said}" in (h.detail or "")
        for h in msg.history
    ), msg.history


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_an_invalid_number_report_suppresses_the_number(
    tmp_path: Path, start_daemon: DaemonFactory, http: aiohttp.ClientSession, kind: str
) -> None:
    d = await start_daemon(config_for(tmp_path, kind))
    msg = await final(d, await send(http, d, INVALID_NUMBER))
    assert msg.status is Status.INVALID
    status, body, _ = await call(
        http, "POST", d, "/messages", json={"to_number": INVALID_NUMBER, "message": "again"}
    )
    assert (status, body["code"]) == (422, "number_suppressed")


@pytest.mark.parametrize("kind", sorted(SIGNING))
async def test_a_forged_report_is_refused_and_changes_nothing(
    tmp_path: Path, start_daemon: DaemonFactory, http: aiohttp.ClientSession, kind: str
) -> None:
    d = await start_daemon(config_for(tmp_path, kind))
    for name in d.health.names:
        d.health.pause(name)  # the message stays queued: only the forgery could move it
    msg_id = await send(http, d)
    url = d.service.report_url(kind, msg_id).split(str(d.port), 1)[1]
    forged = {"MessageUUID": "x", "Status": "delivered", "ErrorCode": "000"}
    async with http.post(f"http://127.0.0.1:{d.port}{url}", data=forged) as resp:
        assert resp.status == 403, await resp.text()
    msg = await d.store.get(msg_id)
    assert msg is not None and msg.status is Status.QUEUED


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_failover_from_the_kind_to_twilio_and_back(
    tmp_path: Path, start_daemon: DaemonFactory, http: aiohttp.ClientSession, kind: str
) -> None:
    d = await start_daemon(config_for(tmp_path, kind, with_twilio=True))

    async def faults(name: str, patch: dict[str, Any]) -> None:
        async with http.put(
            f"http://127.0.0.1:{d.port}/simulator/_faults/{name}", json=patch
        ) as resp:
            assert resp.status == 200, await resp.text()

    await faults(kind, {"down": True})
    msg = await final(d, await send(http, d))
    assert (msg.status, msg.provider) == (Status.DELIVERED, "twilio")
    assert [a.provider for a in msg.attempts] == [kind, "twilio"]

    await faults(kind, {"down": False})
    await faults("twilio", {"down": True})
    d.health.set_weight(kind, 0)
    d.health.set_weight("twilio", 1)
    msg = await final(d, await send(http, d))
    assert (msg.status, msg.provider) == (Status.DELIVERED, kind)
    assert [a.provider for a in msg.attempts] == ["twilio", kind]
