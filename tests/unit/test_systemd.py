"""The sd_notify client reads systemd's environment strictly; the unit file checks the
config before it starts the daemon."""

from __future__ import annotations

import os

import pytest

from dispatchd.systemd import Notifier, unit_file


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


def test_the_unit_checks_the_config_before_it_serves() -> None:
    unit = unit_file(executable="/opt/dispatchd/bin/dispatchd", config="/etc/d/d.toml").splitlines()
    pre = "ExecStartPre=/opt/dispatchd/bin/dispatchd config check --config /etc/d/d.toml"
    start = "ExecStart=/opt/dispatchd/bin/dispatchd serve --config /etc/d/d.toml"
    assert pre in unit and start in unit
    assert unit.index(pre) < unit.index(start)
    # RestartPreventExitStatus does not cover ExecStartPre: the start limit must end the
    # retries of a bad config, and the default (5 in 10 s) is too short to be reached.
    assert unit.index("StartLimitIntervalSec=60") < unit.index("[Service]")
    assert "StartLimitBurst=5" in unit
