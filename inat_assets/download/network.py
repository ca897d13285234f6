"""httpx transports tuned for many small downloads.

The default, ``AiohttpTransport``: httpx stays the interface (requests, responses, exceptions),
aiohttp carries the bytes with its C HTTP parser and one connection pool per process. Profiled
with py-spy (5,000 x 40 KB from the local mirror, 0 ms, files on tmpfs, 2-core VM), h11's pure-
Python parsing and httpcore's per-request locks were 30 % of all samples; CPU per image, medians
of 3: httpcore transports 1.06 ms, the ``httpx-aiohttp`` package's transport 0.89 ms,
``AiohttpTransport`` 0.82 ms (what differs from the package: one URL parse instead of two, no
ClientTimeout or cookie handling per request, whole received chunks instead of 16 KiB slices). bench/download.py compares
it with ``transport="httpcore"`` side by side (``ours-httpcore``).

``transport="httpcore"`` (needed for HTTP/2) uses the per-worker transports below. Two measured
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
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import httpcore
import httpx
import yarl

# httpcore asks sniffio which async library runs on every lock it takes. When sniffio is not
# installed that is a failed import, i.e. a full sys.path scan, per request: a quarter of all CPU
# in our profiles. A None entry makes the import fail at once, which httpcore already treats as
# "asyncio" -- the same answer, minus the scan.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

# Stop reading from the socket while this much is buffered. Bytes waiting here are outside the
# body budget below, so this times the concurrency bounds them: 64 connections x (256 KiB + one
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


# --- aiohttp underneath httpx -----------------------------------------------------------------

class _AiohttpStream(httpx.AsyncByteStream):
    """A response body as aiohttp receives it: each chunk as it arrives (at most aiohttp's read
    buffer, 64 KiB by default), errors mapped to httpx's."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while chunk := await content.readany():
                yield chunk
        except aiohttp.ClientError as exc:
            raise _httpx_error(exc) from exc

    async def aclose(self) -> None:
        # Returns the connection to the pool when the body was read to its end, closes it otherwise
        # (aiohttp checks): an abandoned endless body does not come back as a "reusable" connection.
        self._response.release()


def _httpx_error(exc: aiohttp.ClientError) -> httpx.TransportError:
    """The httpx exception the engine already classifies for an aiohttp one (see photo_fetcher._request).

    Order matters: aiohttp's timeouts are also asyncio.TimeoutError, which the engine reads as its
    own request deadline, so they are mapped first.
    """
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake and certificate
        # The cause alone, as httpcore words it ("[SSL: CERTIFICATE_VERIFY_FAILED] ..."): aiohttp's
        # own text wraps it in a repr that the engine's error grouping would cut apart.
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cause: object = exc.certificate_error
        else:
            cause = exc.os_error
        return httpx.ConnectError(str(cause) or message)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        # A connection closed before or during the response, a body shorter than its length, a
        # response aiohttp's parser refused: what h11 calls a protocol error.
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ClientConnectionError):  # resets and other socket errors mid-exchange
        return httpx.ReadError(message)
    return httpx.TransportError(message)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface on aiohttp's connection pool and C HTTP parser (HTTP/1.1 only).

    One per event loop, shared by all its workers: aiohttp's pool hands out idle connections
    without the per-request scans that made one shared httpcore pool slow (see the module doc).
    The same idea as the ``httpx-aiohttp`` package, which measured 9 % more CPU per image (module
    doc) and reports every closed connection as ``ConnectTimeout``. The engine keeps its own
    rules above this layer: no redirects followed here, no decompression (raw bytes reach
    CappedDecoder), no cookies, no proxies from the environment, the request deadline.
    Header lines are capped by aiohttp (8 KiB a line, 128 fields a response), buffered body
    bytes by its read buffer (reading pauses past twice ``read_bufsize``).
    """

    def __init__(self, ssl_context: ssl.SSLContext, *, max_connections: int, keepalive_expiry: float = 30.0) -> None:
        self._ssl = ssl_context
        self._max_connections = max_connections
        self._keepalive = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, ssl=self._ssl, keepalive_timeout=self._keepalive
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding"), timeout=aiohttp.ClientTimeout(total=None),
        )
        # aiohttp silently repeats a GET once when a pooled connection turns out closed or reset.
        # That second request would pass no host gate (politeness) and not count as an attempt;
        # the engine retries by its own rules instead. There is no public switch for it; the
        # reset case of test_engine's recoverable faults fails if this attribute ever goes away.
        self._session._retry_connection = False
        return self._session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        timeouts = request.extensions.get("timeout") or {}
        key = (timeouts.get("connect"), timeouts.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:  # the engine sends the same few values: one object each, not one per request
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=None, sock_connect=key[0], sock_read=key[1])
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        try:
            response = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),  # httpx has already parsed and encoded it
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                timeout=self._timeout(request),
            )
        except aiohttp.ClientError as exc:
            raise _httpx_error(exc) from exc
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(response.status, headers=response.raw_headers, stream=_AiohttpStream(response),
                              request=request, extensions=extensions)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- Memory bounds for response bodies --------------------------------------------------------

class BodyBudget:
    """Bytes of response bodies one run may hold in memory at once, across all its requests.

    A response reserves its whole size before reading its body (its Content-Length, or the most a
    body may be, ``max_bytes``, when the length is unknown or the body is encoded) and the reserving
    request releases it once the body is written or dropped. Reserving everything up front, while
    holding nothing, is what makes this deadlock-free: a request never waits while holding part of
    the budget, so the holders always finish (or hit their deadline) and free it. The price is that
    bodies of unknown length go budget // max_bytes at a time; iNaturalist's hosts always send a
    Content-Length. Waiters are served in order, so a large reservation is not starved by small ones.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.available = capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def reserve(self, nbytes: int) -> int:
        """Wait until ``nbytes`` (at most the capacity) are free and take them; returns the amount."""
        nbytes = min(nbytes, self.capacity)
        if not self._waiters and nbytes <= self.available:
            self.available -= nbytes
            return nbytes
        waiter = asyncio.get_running_loop().create_future()
        entry = (nbytes, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(nbytes)  # granted, then cancelled before it could be used
            else:
                self._waiters.remove(entry)
                self._grant()  # the next waiter may fit now that this one left the queue
            raise
        return nbytes

    def release(self, nbytes: int) -> None:
        self.available += nbytes
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.available:
            nbytes, waiter = self._waiters.popleft()
            self.available -= nbytes
            waiter.set_result(None)


class BodyTooLarge(Exception):
    """A decoded body grew past its limit."""


class CappedDecoder:
    """Undoes one gzip or deflate Content-Encoding without ever producing more than ``limit`` + 1 bytes.

    zlib's ``max_length`` bounds each call's output, so a small compressed body cannot inflate to
    gigabytes in memory before anyone counts it (httpx's own decoders inflate each chunk in full:
    a 2.4 KB ``gzip, gzip`` body took 2.1 GB). Stacked and other encodings are refused by the
    caller instead: photos are never sent that way.
    """

    DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})

    def __init__(self, encoding: str, limit: int) -> None:
        self.limit = limit
        self.produced = 0
        self._deflate = encoding == "deflate"
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if not self._deflate else zlib.MAX_WBITS)
        self._started = False

    def decode(self, data: bytes) -> bytes:
        """Decoded bytes for this chunk; raises BodyTooLarge past the limit, zlib.error on bad data."""
        try:
            out = self._zlib.decompress(data, self.limit + 1 - self.produced)
        except zlib.error:
            if not (self._deflate and not self._started):
                raise
            # "deflate" is meant to be zlib-wrapped, but some servers send raw deflate.
            self._deflate = False
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(data, self.limit + 1 - self.produced)
        self._started = True
        self.produced += len(out)
        if self.produced > self.limit or self._zlib.unconsumed_tail:
            raise BodyTooLarge
        return out

    def finish(self) -> bytes:
        """The last decoded bytes; raises EOFError if the compressed stream is incomplete."""
        out = self._zlib.flush()
        self.produced += len(out)
        if self.produced > self.limit:
            raise BodyTooLarge
        if not self._zlib.eof:
            raise EOFError
        return out
