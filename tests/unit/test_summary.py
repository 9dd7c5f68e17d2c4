"""`dispatchd status` text from a hand-written control snapshot, no daemon."""

from __future__ import annotations

from typing import Any

from dispatchd.control.format import fmt_age
from dispatchd.control.summary import render, table

STARTED = 1_800_000_000.0
UPTIME = 3725.0
NOW = STARTED + UPTIME


def provider(name: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "state": "healthy",
        "paused": False,
        "configured_weight": 30,
        "weight": 30,
        "effective_weight": 30,
        "weight_factor": 1.0,
        "shift_reason": None,
        "breaker": "closed",
        "breaker_reason": None,
        "breaker_until": None,
        "calls": 120,
        "share": 0.5,
        "success_rate": 1.0,
        "p50_ms": 3.2,
        "p95_ms": 8.6,
        "in_flight": 2,
        "rate": 0.0,
        "max_in_flight": 0,
        "throttled": 0,
        "held_until": None,
        "last_error": None,
        "last_error_at": None,
    }
    return {**base, **fields}


def snapshot(**fields: Any) -> dict[str, Any]:
    # 60 one-second samples: 2/s accepted in the last 10, nothing before.
    rates = [
        {
            "at": NOW - 60 + i,
            "accepted": 2 if i >= 50 else 0,
            "sent": 1,
            "delivered": 1,
            "failed": 0,
        }
        for i in range(60)
    ]
    base: dict[str, Any] = {
        "protocol": 1,
        "instance": "c448ec9c8e12",
        "pid": 4242,
        "started_at": STARTED,
        "uptime_s": UPTIME,
        "seq": 99,
        "providers": [
            provider("twilio-us"),
            provider(
                "smpp-eu",
                state="circuit_open",
                weight=70,
                configured_weight=70,
                effective_weight=0,
                breaker="open",
                breaker_reason="5 transport failures in a row",
                calls=7,
                success_rate=0.2857,
                p95_ms=12_400.0,
                in_flight=0,
                rate=10.0,
                max_in_flight=4,
                throttled=3,
                held_until=NOW + 4.2,
                last_error="no answer within 5s",
                last_error_at=NOW - 12,
            ),
        ],
        "queue": {
            # A status this module has never heard of is shown like the others.
            "counts": {"queued": 5, "sending": 1, "delivered": 812, "quarantined": 2},
            "oldest_queued_age_s": 75.0,
            "waiting_retry": 3,
        },
        "rates": rates,
        "recent": [],
    }
    return {**base, **fields}


def cells(text: str, first: str) -> list[str]:
    """The row that starts with `first`, split into its cells."""
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [first])


def test_header_names_the_process() -> None:
    first = render(snapshot()).splitlines()[0]
    assert first == "dispatchd pid 4242, up 1h02m, instance c448ec9c8e12"


def test_providers_show_state_weights_window_and_limits() -> None:
    text = render(snapshot())
    row = {line.split()[0]: " ".join(line.split()) for line in text.splitlines() if line}
    assert row["provider"] == "provider state weight calls ok p95 inflight limit throttled"
    assert row["twilio-us"] == "twilio-us healthy 30 120 100% 9ms 2 - 0"
    assert row["smpp-eu"] == "smpp-eu circuit open 70->0 7 28.6% 12.4s 0/4 10/s 3 held 4s"
    assert "  smpp-eu: circuit open: 5 transport failures in a row" in text.splitlines()
    assert "  smpp-eu: last error (12s ago): no answer within 5s" in text.splitlines()


def test_a_paused_provider_gets_no_reason_line() -> None:
    paused = provider("p", state="paused", effective_weight=0, shift_reason="2 of 9 failed")
    text = render(snapshot(providers=[paused]))
    assert " ".join(text.splitlines()[3].split()[:3]) == "p paused 30->0"
    assert "2 of 9 failed" not in text


def test_queue_shows_every_status_the_snapshot_gives() -> None:
    lines = render(snapshot()).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("queue "))
    counts = dict(zip(lines[at].split()[1:], lines[at + 1].split(), strict=True))
    assert counts == {"queued": "5", "sending": "1", "delivered": "812", "quarantined": "2"}
    assert lines[at + 2] == "oldest queued 1m15s, waiting retry 3"


def test_rates_are_averaged_over_ten_seconds_and_a_minute() -> None:
    text = render(snapshot())
    assert cells(text, "per")[2:] == ["accepted", "sent", "delivered", "failed"]
    assert cells(text, "last")[1:] == ["10s", "2.0", "1.0", "1.0", "0.0"]
    minute = next(line for line in text.splitlines() if line.startswith("last 1m "))
    assert minute.split()[2:] == ["0.3", "1.0", "1.0", "0.0"]  # 20 accepted over 60 s


def test_a_young_daemon_averages_over_the_seconds_it_has() -> None:
    young = snapshot(rates=[{"at": NOW, "accepted": 4, "sent": 0, "delivered": 0, "failed": 0}])
    assert cells(render(young), "last")[1:] == ["10s", "4.0", "0.0", "0.0", "0.0"]
    assert "rates: no samples yet" in render(snapshot(rates=[]))


def test_it_fits_80_columns_even_with_a_long_last_error() -> None:
    snap = snapshot()
    snap["providers"][1]["last_error"] = "HTTP 500: " + "x" * 200
    lines = render(snap).splitlines()
    assert max(map(len, lines)) <= 80
    assert any(line.endswith("...") for line in lines)


def test_missing_parts_are_said_not_crashed_on() -> None:
    text = render(snapshot(queue=None, providers=[], protocol=2))
    assert "control protocol 2, expected 1" in text.splitlines()[0]
    assert "no providers" in text
    assert "queue: unknown (the daemon could not read its database)" in text


def test_table_pads_columns_and_trims_trailing_blanks() -> None:
    assert table([["a", "bb", ""], ["ccc", "d", "e"]]) == ["a    bb", "ccc  d   e"]


def test_ages_read_as_seconds_minutes_hours() -> None:
    assert [fmt_age(s) for s in (None, 4.4, 59.6, 75, 7260)] == [
        "-",
        "4s",
        "1m00s",
        "1m15s",
        "2h01m",
    ]
