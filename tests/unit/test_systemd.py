"""The sd_notify client reads systemd's environment strictly."""

from __future__ import annotations

import os

import pytest

from dispatchd.systemd import Notifier


def test_watchdog_interval_comes_from_watchdog_usec() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_interval == 2.0


@pytest.mark.parametrize("usec", ["", "²", "٣٠٠", "-5", "1e6"])
def test_a_watchdog_usec_that_is_not_plain_digits_disables_the_watchdog(usec: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval is None


def test_a_watchdog_meant_for_another_process_is_ignored() -> None:
    other = str(os.getpid() + 1)
    notifier = Notifier({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": other})
    assert notifier.watchdog_interval is None
