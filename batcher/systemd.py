"""sd_notify for ``Type=notify`` units: READY, STOPPING, WATCHDOG (only when the unit asks for it), and
STATUS + EXTEND_TIMEOUT_USEC while start-up waits for the database.

Accepts abstract socket names (``@…``). Without ``NOTIFY_SOCKET`` every call is a no-op. Reads its two
variables through :mod:`batcher.settings`-free parameters: the caller passes the environment values.
"""

from __future__ import annotations

import socket


class Notifier:
    """Sends datagrams to systemd's notify socket."""

    def __init__(self, notify_socket: str | None, watchdog_usec: str | None) -> None:
        self._address: str | None = None
        if notify_socket:
            self._address = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
        self.watchdog_interval: float | None = None
        if watchdog_usec and watchdog_usec.isdigit() and int(watchdog_usec) > 0:
            self.watchdog_interval = int(watchdog_usec) / 1_000_000 / 2

    def notify(self, message: str) -> bool:
        if self._address is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode(), self._address)
            except OSError:
                return False
        return True

    def ready(self) -> None:
        self.notify("READY=1\nSTATUS=scheduling jobs")

    def waiting(self, status: str, extend_seconds: float) -> None:
        """Still starting (not ready): a STATUS line, and EXTEND_TIMEOUT_USEC so that systemd's start
        timeout (TimeoutStartSec) does not kill a daemon that is waiting for its database."""
        self.notify(f"STATUS={status}\nEXTEND_TIMEOUT_USEC={int(extend_seconds * 1_000_000)}")

    def stopping(self) -> None:
        self.notify("STOPPING=1\nSTATUS=draining running jobs")

    def watchdog(self) -> None:
        if self.watchdog_interval is not None:
            self.notify("WATCHDOG=1")
