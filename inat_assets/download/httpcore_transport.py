"""httpx's own stack (httpcore, h11/h2), tuned for many small downloads: ``transport="httpcore"``.

HTTP/2 needs it. Every worker owns one of the transports below. Two measured
problems with a stock ``httpx.AsyncClient`` and what this module does about them (20,000 x 40 KB
from the local mirror, 2 cores; see bench/download.py):

* One client with a 64-connection pool spends most of its CPU assigning requests to connections
  (encode/httpx#3215): a request can be handed an idle connection that another request grabs first,
  and the pool scans every connection on each change. Here every worker owns a transport whose
  pool only ever sees one request at a time, so that never happens and the scans stay tiny.
* httpcore's anyio network backend costs about a third of the remaining CPU (cancel scopes,
  ``sniffio`` look-ups and socket attribute queries on every read). ``AsyncioBackend`` below is a
  plain asyncio Protocol implementing httpcore's documented ``AsyncNetworkBackend`` interface;
  h11/h2, connection pooling, TLS checks and httpx's exceptions are unchanged.

The ``AsyncClient`` layer is skipped too (it costs about as much again as the transport: cookies,
auth and redirect machinery, URL merging); the engine builds ``httpx.Request`` objects itself and
follows redirects by hand because it must check every hop against the host allowlist anyway.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import ssl
import sys
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

# httpcore asks sniffio which async library runs on every lock it takes. When sniffio is not
# installed that is a failed import, i.e. a full sys.path scan, per request: a quarter of all CPU
# in our profiles. A None entry makes the import fail at once, which httpcore already treats as
# "asyncio" -- the same answer, minus the scan.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

# Stop reading from the socket while this much is buffered. Bytes waiting here are outside the
# body budget (network.BodyBudget), so this times the concurrency bounds them: 64 connections x (256 KiB + one
# 256 KiB read) = 32 MiB at most. (AiohttpTransport: aiohttp pauses at 128 KiB a connection,
# 32 MiB for the default 256.)
_READ_PAUSE_BYTES = 256 * 1024


class _StreamProtocol(asyncio.Protocol):
    """Buffers incoming data and wakes the one reader waiting for it."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _READ_PAUSE_BYTES and self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        drain = self.drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        if self.drain_waiter is None or self.drain_waiter.done():
            self.drain_waiter = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)


class _ReadWatchdog:
    """Read timeouts for every stream of one event loop, checked by a single repeating timer.

    A timer per read (loop.call_later, then cancel) cost 12-15 % of the CPU at 50 ms latency:
    cancelled handles pile up in the loop's heap, whose comparisons run in Python. Here a read
    only records its deadline; a sweep every ``tick`` seconds (a quarter of the shortest timeout,
    at most 1 s) fails the reads that are overdue, so a timeout fires up to a quarter late.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[asyncio.Future[None], float] = {}
        self.tick = 1.0
        self.handle: asyncio.TimerHandle | None = None

    def add(self, waiter: asyncio.Future[None], timeout: float) -> None:
        self.waiting[waiter] = self.loop.time() + timeout
        self.tick = min(self.tick, max(timeout / 4, 0.005))
        if self.handle is None:
            self.handle = self.loop.call_later(self.tick, self._sweep)

    def _sweep(self) -> None:
        self.handle = None
        now = self.loop.time()
        for waiter in [w for w, deadline in self.waiting.items() if deadline <= now]:
            del self.waiting[waiter]
            if not waiter.done():
                waiter.set_exception(httpcore.ReadTimeout("read timed out"))
        if self.waiting:
            self.handle = self.loop.call_later(self.tick, self._sweep)


_WATCHDOGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ReadWatchdog] = weakref.WeakKeyDictionary()


def _watchdog() -> _ReadWatchdog:
    loop = asyncio.get_running_loop()
    dog = _WATCHDOGS.get(loop)
    if dog is None:
        dog = _WATCHDOGS[loop] = _ReadWatchdog(loop)
    return dog


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._watchdog = _watchdog()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        proto = self._protocol
        if not proto.chunks and not proto.eof:
            waiter = proto.waiter = self._watchdog.loop.create_future()
            if timeout is not None:
                self._watchdog.add(waiter, timeout)
            try:
                await waiter
            finally:
                proto.waiter = None
                self._watchdog.waiting.pop(waiter, None)
        if proto.chunks:
            chunk = proto.chunks.popleft()
            if len(chunk) > max_bytes:
                proto.chunks.appendleft(chunk[max_bytes:])
                chunk = chunk[:max_bytes]
            proto.buffered -= len(chunk)
            if proto.reading_paused and proto.buffered < _READ_PAUSE_BYTES // 2:
                proto.reading_paused = False
                self._transport.resume_reading()
            return chunk
        if proto.error is not None:
            raise httpcore.ReadError(str(proto.error) or type(proto.error).__name__)
        return b""  # clean end of stream; h11 decides whether that was premature

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore.WriteError("connection closed")
        self._transport.write(buffer)
        drain = self._protocol.drain_waiter
        if drain is not None and not drain.done():
            try:
                async with asyncio.timeout(timeout):
                    await drain
            except TimeoutError:
                raise httpcore.WriteTimeout("write timed out") from None

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if tls is None:
            raise httpcore.ConnectError("connection closed during TLS handshake")
        return AsyncioStream(tls, self._protocol)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # httpcore: an idle connection that became readable is dead
            return bool(self._protocol.chunks) or self._protocol.eof
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend on a bare asyncio Protocol (TCP and TLS; no Unix sockets)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[tuple[int, int, Any]] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _StreamProtocol, host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return AsyncioStream(transport, protocol)  # type: ignore[arg-type]

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def make_transport(
    ssl_context: ssl.SSLContext, *, http2: bool = False, max_connections: int = 4, fast: bool = True
) -> httpx.AsyncHTTPTransport:
    """An httpx transport with a small pool, meant to be used by one worker at a time.

    ``max_connections`` above 1 keeps a connection to each of a few hosts alive when a worker
    alternates between them. With ``fast`` the pool runs on ``AsyncioBackend``; the pool is built
    with httpcore's public constructor and swapped into httpx's transport (httpx does not expose a
    network_backend argument). If a future httpx lays its transport out differently, the stock
    pool stays in place: slower, never wrong.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=30.0
    )
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, http2=http2, limits=limits, trust_env=False)
    if fast and isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=http2,
            network_backend=AsyncioBackend(),
        )
    return transport
