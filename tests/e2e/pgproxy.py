"""A TCP proxy on 127.0.0.1 in front of PostgreSQL for outage tests, run on the test's event loop.

It can refuse every connection (accept, then reset: the client sees ``ConnectionResetError`` at once, as
with a database that is down), and it can cut one connection in the middle of a large transfer: armed
with ``cut_after(n)``, the first connection that sends more than ``n`` bytes client→server from then on
is reset in both directions (SO_LINGER 0 + abort: an RST, not a clean FIN). Only a bulk transfer (a COPY
of a big batch) sends that much on one connection; queries, LISTEN and the liveness lock send little.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST: linger 0, then abort (no flush, no FIN)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    sent: int = 0  # client→server bytes since the proxy was last armed


@dataclass
class PgProxy:
    target_host: str
    target_port: int
    refusing: bool = False
    cuts: int = 0
    refused: int = 0
    _threshold: int | None = None
    _links: set[_Link] = field(default_factory=set)
    _server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    async def start(self) -> PgProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            _reset(link.client)
            _reset(link.server)
        if self._server is not None:
            await self._server.wait_closed()

    def cut_after(self, nbytes: int) -> None:
        """Arm a one-shot cut: the first connection to send ``nbytes`` more client→server is reset."""
        for link in self._links:
            link.sent = 0
        self._threshold = nbytes

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer, link, count=True),
                                 self._pump(up_reader, writer, link, count=False))
        finally:
            self._links.discard(link)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link,
                    *, count: bool) -> None:
        try:
            while data := await reader.read(65536):
                if count:
                    link.sent += len(data)
                    if self._threshold is not None and link.sent >= self._threshold:
                        self._threshold = None
                        self.cuts += 1
                        _reset(link.client)
                        _reset(link.server)
                        return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if not writer.transport.is_closing():
                    writer.close()
