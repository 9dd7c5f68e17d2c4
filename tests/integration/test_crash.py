"""SIGKILL the daemon mid-delivery, restart it on the same database: nothing accepted is lost.

The daemon and the simulated providers run as real subprocesses (`python -m dispatchd
...`), started the way `dispatchd bench` starts them. The simulator answers slowly
and reports late, so deliveries are in flight when the daemon dies, and it retries
reports the dead daemon could not take. Duplicates are counted by the simulator: a
`(to_number, message)` pair it accepted more than once.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatchd.devtools.bench import Process, free_port, wait_http
from tests.conftest import wait_for

pytestmark = pytest.mark.slow  # real daemon processes, SIGKILLed and restarted

BURST = 300
FINAL = {"delivered", "failed", "invalid", "expired"}
UNFINISHED = ("queued", "sending", "sent")
# At most this many provider calls are in flight, so at most this many can be duplicated.
CONCURRENCY = 8


def write_configs(workdir: Path, port: int, sim_port: int) -> tuple[Path, Path]:
    simulator = workdir / "simulator.toml"
    simulator.write_text(
        """
[simulator]
failure_rate = 0.0
latency = 0.1
callback_delay = 0.3
delivered = 1.0
failed = 0.0
invalid = 0.0
invalid_suffix = ""
# Reports that reach the daemon while it is dead are retried until it is back.
callback_retry_for = 25.0
[log]
level = "warning"
"""
    )
    daemon = workdir / "dispatchd.toml"
    sim = f"http://127.0.0.1:{sim_port}"
    daemon.write_text(
        f"""
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
[storage]
path = "{workdir / "crash.db"}"
[delivery]
concurrency = {CONCURRENCY}
backoff_initial = 0.1
backoff_max = 0.5
[[providers]]
name = "provider1"
url = "{sim}/provider1"
weight = 30
timeout = 2.0
[[providers]]
name = "provider2"
url = "{sim}/provider2"
weight = 70
timeout = 2.0
[log]
level = "warning"
"""
    )
    return simulator, daemon


async def count(http: aiohttp.ClientSession, base: str, status: str) -> int:
    async with http.get(f"{base}/messages", params={"status": status, "limit": "500"}) as resp:
        assert resp.status == 200
        return len((await resp.json())["items"])


async def send_burst(http: aiohttp.ClientSession, base: str) -> list[str]:
    async def send(i: int) -> str:
        body = {"to_number": f"+1703457{i:04d}", "message": f"burst message {i}"}
        async with http.post(f"{base}/messages", json=body) as resp:
            data = await resp.json()
            assert resp.status == 202, data
            return str(data["id"])

    return list(await asyncio.gather(*(send(i) for i in range(1, BURST + 1))))


async def test_sigkill_mid_delivery_then_restart_finishes_every_accepted_message(
    short_tmp: Path,
) -> None:
    port, sim_port = free_port(), free_port()
    sim_config, config = write_configs(short_tmp, port, sim_port)
    base, sim_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sim_port}"
    serve = ["serve", "--config", str(config)]
    processes: list[Process] = []

    def start(name: str, args: list[str]) -> Process:
        proc = Process(name, args, short_tmp, {})
        processes.append(proc)
        return proc

    sim_args = ["simulator", "--port", str(sim_port), "--config", str(sim_config), "--seed", "1"]
    sim = start("simulator", sim_args)
    daemon = start("daemon", serve)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            await wait_http(f"{sim_base}/readyz", sim)
            await wait_http(f"{base}/readyz", daemon)
            ids = await send_burst(http, base)

            async def mid_delivery() -> bool:
                return await count(http, base, "delivered") >= 20 and (
                    await count(http, base, "sending") > 0
                )

            await wait_for(mid_delivery, within=15, interval=0.02, what="deliveries in flight")
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait()
            assert daemon.stop() == -signal.SIGKILL

            restarted = start("daemon-restarted", serve)
            await wait_http(f"{base}/readyz", restarted)

            async def all_final() -> bool:
                return not any([await count(http, base, s) for s in UNFINISHED])

            await wait_for(all_final, within=30, interval=0.1, what="every message final")
            messages = []
            for msg_id in ids:
                async with http.get(f"{base}/messages/{msg_id}") as resp:
                    assert resp.status == 200, msg_id
                    messages.append(await resp.json())
            async with http.get(f"{sim_base}/_stats") as resp:
                stats: dict[str, Any] = await resp.json()
    finally:
        codes = {p.name: p.stop() for p in reversed(processes)}

    not_final = [m["id"] for m in messages if m["status"] not in FINAL]
    assert not not_final, f"{len(not_final)} accepted messages never finished: {not_final[:5]}"
    assert {m["status"] for m in messages} == {"delivered"}
    requeued = sum(
        any(h["detail"] == "requeued after restart" for h in m["history"]) for m in messages
    )
    duplicates = stats["messages"]["duplicates"]
    print(
        f"\ncrash test: {BURST} accepted, {requeued} in flight at the kill (requeued), "
        f"{duplicates} duplicate provider requests, {stats['reports']['retries']} report retries"
    )
    assert requeued >= 1, "the kill happened while nothing was in flight"
    # Only a message the provider accepted whose `sent` commit the kill prevented is resent.
    assert duplicates <= requeued
    assert stats["messages"]["distinct"] == BURST
    assert codes["daemon-restarted"] in (0, -signal.SIGTERM), "see daemon-restarted.log"
