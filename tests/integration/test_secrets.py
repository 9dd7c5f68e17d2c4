"""Provider secrets stay secret: never in logs, the control socket, metrics or the HTTP API.

A real in-process daemon sends through a twilio-kind and an smpp-kind provider against its
own simulator (the shape of examples/providers.toml, on free ports), with distinctive
secrets; then every surface an operator or a client can read is searched for them, in the
forms a leak would take (plain, HTTP Basic's base64, hex of the bind PDU's bytes).
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from dispatchd.cli import EXIT_CONFIG
from dispatchd.daemon import Daemon
from dispatchd.domain.models import Status
from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.helpers import NUMBER, OTHER_NUMBER, Json, call

REPO_ROOT = Path(__file__).resolve().parents[2]

ACCOUNT_SID = "AC" + "5ec7e7" * 5 + "ab"
AUTH_TOKEN = "tw-auth-TOKEN-q7Zx3Kv9LmP2"
SMPP_PASSWORD = "Pw7Qz3Kx"  # SMPP 3.4 passwords are at most 8 characters


def leaks(text: str) -> list[str]:
    """The forms of a secret found in `text`: as written, in Basic auth, hex-encoded."""
    basic = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    needles = {
        "auth_token": AUTH_TOKEN,
        "auth_token (Basic)": basic,
        "password": SMPP_PASSWORD,
        "auth_token (hex)": AUTH_TOKEN.encode().hex(),
        "password (hex)": SMPP_PASSWORD.encode().hex(),
        "password (HEX)": SMPP_PASSWORD.encode().hex().upper(),
    }
    return [name for name, needle in needles.items() if needle in text]


def providers(base: str, smpp_port: int) -> list[Json]:
    return [
        {
            "name": "twilio",
            "kind": "twilio",
            "url": f"{base}/simulator/twilio",
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "from": "+15005550006",
            "weight": 50,
        },
        {
            "name": "smsc",
            "kind": "smpp",
            "host": "127.0.0.1",
            "port": smpp_port,
            "system_id": "dispatchd",
            "password": SMPP_PASSWORD,
            "source_addr": "DISPATCHD",
            "source_addr_ton": 5,
            "enquire_link": 30,
            "weight": 50,
        },
    ]


@pytest.fixture
async def daemon(
    start_daemon: DaemonFactory, tmp_path: Path, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> Daemon:
    caplog.set_level(logging.DEBUG)  # before the start, so `event=started` is captured too
    port, smpp_port = free_port(), free_port()
    cfg = make_config(
        tmp_path,
        port,
        providers=providers(f"http://127.0.0.1:{port}", smpp_port),
        # The receipt can beat the submit's answer to the store; the SMSC offers it again,
        # as real ones do with ESME_RX_T_APPN.
        simulator={"smpp_port": smpp_port, "callback_retry_for": 5.0},
        control={"socket": str(short_tmp / "c.sock")},
        log={"level": "debug"},
    )
    return await start_daemon(cfg)


@pytest.fixture
async def control(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.UnixConnector(path=str(daemon.config.control_socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def send_through(http: aiohttp.ClientSession, d: Daemon, provider: str, number: str) -> str:
    """Send one message with every other provider paused, so `provider` takes it."""
    for name in d.health.names:
        (d.health.resume if name == provider else d.health.pause)(name)
    status, body, _ = await call(
        http, "POST", d, "/messages", json={"to_number": number, "message": "secret test"}
    )
    assert status == 202, body
    msg_id = str(body["id"])

    async def delivered() -> bool:
        msg = await d.store.get(msg_id)
        return msg is not None and msg.status is Status.DELIVERED

    await wait_for(delivered, within=15, what=f"{msg_id} delivered through {provider}")
    msg = await d.store.get(msg_id)
    assert msg is not None and msg.provider == provider
    return msg_id


async def test_secrets_appear_on_no_surface(
    daemon: Daemon,
    control: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    surfaces: dict[str, str] = {}
    async with control.ws_connect("http://d/v1/events") as ws:
        first = await ws.receive_str(timeout=5)
        ids = [
            await send_through(http, daemon, "twilio", NUMBER),
            await send_through(http, daemon, "smsc", OTHER_NUMBER),
        ]
        frames = [first]
        # Every event up to both deliveries (the provider events, stats and queue between).
        pending = set(ids)
        while pending:
            frame = await ws.receive_str(timeout=10)
            frames.append(frame)
            event = json.loads(frame)
            if event["type"] == "delivered":
                pending.discard(event["payload"].get("id"))
    surfaces["control events"] = "\n".join(frames)
    kinds = {json.loads(f)["type"] for f in frames}
    assert {"snapshot", "accepted", "sent", "delivered"} <= kinds, kinds
    for name in daemon.health.names:
        daemon.health.resume(name)

    async with control.get("http://d/v1/snapshot") as resp:
        assert resp.status == 200
        surfaces["control snapshot"] = await resp.text()
    snapshot = json.loads(surfaces["control snapshot"])
    assert {p["name"] for p in snapshot["providers"]} == {"twilio", "smsc"}
    for msg_id in ids:
        async with control.get(f"http://d/v1/messages/{msg_id}") as resp:
            assert resp.status == 200
            surfaces[f"control message {msg_id}"] = await resp.text()

    for path in ["/metrics", "/openapi.json", *(f"/messages/{i}" for i in ids)]:
        async with http.get(f"http://127.0.0.1:{daemon.port}{path}") as resp:
            assert resp.status == 200, path
            surfaces[path] = await resp.text()
    assert 'provider="twilio"' in surfaces["/metrics"]
    assert 'provider="smsc"' in surfaces["/metrics"]
    for msg_id in ids:
        assert json.loads(surfaces[f"/messages/{msg_id}"])["status"] == "delivered"

    # Logs, from the daemon's start on: every record's message and parts (arguments,
    # exception text, extra attributes), and the formatted text.
    records = caplog.get_records("setup") + caplog.records
    assert any("event=started" in r.getMessage() for r in records)
    assert any(r.levelno == logging.DEBUG for r in records), "debug records were captured"
    assert any("provider=smsc" in r.getMessage() for r in records)
    surfaces["logs"] = caplog.text
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    surfaces["log records"] = "\n".join(
        f"{formatter.format(r)} {r.args!r} {r.__dict__!r}" for r in records
    )

    found = {where: hits for where, text in surfaces.items() if (hits := leaks(text))}
    assert not found, f"secrets leaked: {found}"


def test_config_repr_and_dump_hide_secrets(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, 8080, providers=providers("http://127.0.0.1:8080", 2775))
    for text in (repr(cfg), str(cfg), repr(cfg.providers), cfg.model_dump_json()):
        assert not leaks(text), text
    assert "**********" in repr(cfg.providers[0])


# -- the command line, as a subprocess ------------------------------------------------------


def good_toml(tmp_path: Path) -> str:
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {free_port()}",
        "[storage]",
        f'path = "{tmp_path / "d.db"}"',
        "[control]",
        f'socket = "{tmp_path / "c.sock"}"',
        "[simulator]",
        "enabled = true",
        f"smpp_port = {free_port()}",
    ]
    for provider in providers("http://127.0.0.1:8080", 2775):
        lines.append("[[providers]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in provider.items()]
    return "\n".join(lines) + "\n"


def dispatchd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatchd", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )


# A bad SMPP password: nine characters, and as secret as a good one.
LONG_PASSWORD = "Leak9Char"
BAD_FILES = {
    # (what the good file has, what the bad one has instead, the key its error names)
    "twilio unknown key": (
        f'auth_token = "{AUTH_TOKEN}"\n',
        f'auth_token = "{AUTH_TOKEN}"\nregion = "us1"\n',
        "providers[0].region",
    ),
    "smpp password too long": (
        f'password = "{SMPP_PASSWORD}"',
        f'password = "{LONG_PASSWORD}"',
        "providers[1].password",
    ),
}


@pytest.mark.slow
def test_config_check_and_serve_exit_78_naming_the_key(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(good_toml(tmp_path))
    ok = dispatchd("config", "check", "--config", str(good), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout, ok.stdout
    assert "twilio (twilio)" in ok.stdout and "smsc (smpp)" in ok.stdout, ok.stdout
    assert not leaks(ok.stdout + ok.stderr)

    for case, (old, new, key) in BAD_FILES.items():
        text = good.read_text()
        assert old in text, case
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace(old, new, 1))
        for command in (("config", "check"), ("serve",)):
            result = dispatchd(*command, "--config", str(bad), cwd=tmp_path)
            output = result.stdout + result.stderr
            assert result.returncode == EXIT_CONFIG, (case, command, output)
            assert key in result.stderr, (case, command, result.stderr)
            assert "Traceback" not in output, (case, command, output)
            assert not leaks(output) and LONG_PASSWORD not in output, (case, command, output)
    assert not (tmp_path / "d.db").exists(), "serve stopped before opening the database"
