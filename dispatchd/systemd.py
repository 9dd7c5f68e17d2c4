"""systemd integration: the sd_notify protocol and a ready-made unit file.

The notify protocol is one datagram per message to the unix socket named by
`$NOTIFY_SOCKET` (a leading `@` means the abstract namespace), so it needs no
library. Outside systemd every call is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)


class Notifier:
    """Sends READY/STOPPING/STATUS/WATCHDOG to systemd when run under `Type=notify`."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isascii() and usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 1_000_000 if watched else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` lines; False when not under systemd or the send failed."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            logger.warning("event=sd_notify_failed error=%r", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    async def watchdog(self, status: Callable[[], str], healthy: Callable[[], bool]) -> None:
        """Ping the watchdog at half its interval while `healthy()`; refresh STATUS each time."""
        interval = (self.watchdog_interval or 30.0) / 2
        while True:
            fields = [f"STATUS={status()}"]
            # A stuck daemon must stop pinging so systemd restarts it.
            if self.watchdog_interval is not None and healthy():
                fields.append("WATCHDOG=1")
            self.notify(*fields)
            await asyncio.sleep(interval)


def unit_file(
    *,
    executable: str | None = None,
    config: str = "/etc/dispatchd/dispatchd.toml",
    stop_timeout: float = 30.0,
    watchdog_sec: int = 30,
) -> str:
    """A systemd service unit running dispatchd with its state in systemd-managed directories."""
    exe = executable or _entry_point()
    return f"""\
# dispatchd SMS dispatch proxy. Install:
#   dispatchd systemd-unit | sudo tee /etc/systemd/system/dispatchd.service
#   sudo install -D -m 0644 dispatchd.toml /etc/dispatchd/dispatchd.toml
#   sudo systemctl daemon-reload && sudo systemctl enable --now dispatchd
[Unit]
Description=dispatchd SMS dispatch proxy
After=network-online.target
Wants=network-online.target
# A start (the config check included) takes over a second, so systemd's default limit of
# 5 starts in 10 s is never reached with RestartSec=2: a bad config would be retried
# forever. 5 starts in a minute, then the unit stays failed.
StartLimitIntervalSec=60
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
# A bad config fails here, its key named in the journal, before serve opens anything.
# RestartPreventExitStatus covers only ExecStart, so a failed check is retried up to the
# start limit above.
ExecStartPre={exe} config check --config {config}
ExecStart={exe} serve --config {config}
ExecReload=/bin/kill -HUP $MAINPID
# The database lives in /var/lib/dispatchd, the control socket in /run/dispatchd.
StateDirectory=dispatchd
StateDirectoryMode=0700
RuntimeDirectory=dispatchd
RuntimeDirectoryMode=0700
Environment=DISPATCHD_STORAGE__PATH=/var/lib/dispatchd/dispatchd.db
Environment=DISPATCHD_CONTROL__SOCKET=/run/dispatchd/control.sock
# In-flight provider calls get the shutdown grace; systemd waits a little longer.
TimeoutStopSec={int(stop_timeout)}
WatchdogSec={watchdog_sec}
Restart=on-failure
RestartSec=2
# Exit 78 is a configuration error: restarting cannot fix it.
RestartPreventExitStatus=78
DynamicUser=yes
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def _entry_point() -> str:
    """The installed `dispatchd` script beside this interpreter, else `python -m dispatchd`."""
    script = Path(sys.executable).with_name("dispatchd")
    if script.exists():
        return str(script.absolute())
    return f"{Path(sys.executable).absolute()} -m dispatchd"
