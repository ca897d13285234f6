"""httpx transports tuned for many small downloads.

The default, ``AiohttpTransport``: httpx stays the interface (requests, responses, exceptions),
aiohttp carries the bytes with its C HTTP parser and one connection pool per process. Profiled
with py-spy (5,000 x 40 KB from the local mirror, 0 ms, files on tmpfs, 2-core VM), h11's pure-
Python parsing and httpcore's per-request locks were 30 % of all samples; CPU per image, medians
of 3: httpcore transports 1.06 ms, the ``httpx-aiohttp`` package's transport 0.89 ms,
``AiohttpTransport`` 0.82 ms (what differs from the package: one URL parse instead of two, no
ClientTimeout or cookie handling per request, whole received chunks instead of 16 KiB slices). bench/download.py
compares it with ``transport="httpcore"`` side by side (``ours-httpcore``).

``transport="httpcore"`` (needed for HTTP/2): httpcore_transport.py, imported only by runs that use it
(httpcore is 31 ms of every worker process's start otherwise).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import yarl

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


def _header_items(headers: httpx.Headers) -> list[tuple[str, str]]:
    """``headers.multi_items()`` for ASCII fields (the engine's always are) without httpx's guess
    of their text encoding on every request (1.5 % of the event loop's CPU at 0 ms)."""
    try:
        return [(key.decode("ascii"), value.decode("ascii")) for key, value in headers.raw]
    except UnicodeDecodeError:
        return headers.multi_items()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface on aiohttp's connection pool and C HTTP parser (HTTP/1.1 only).

    One per event loop, shared by all its workers: aiohttp's pool hands out idle connections
    without the per-request scans that made one shared httpcore pool slow (see the module doc).
    The same idea as the ``httpx-aiohttp`` package, which measured 9 % more CPU per image (module
    doc) and reports every closed connection as ``ConnectTimeout``. The engine keeps its own
    rules above this layer: no redirects followed here, no decompression (raw bytes reach
    CappedDecoder), no cookies, no proxies from the environment, the request deadline and read timeouts
    (request_clock.py; only the connect timeout is given to aiohttp).
    Header lines are capped by aiohttp (8 KiB a line, 128 fields a response), buffered body
    bytes by its read buffer (reading pauses past twice ``read_bufsize``).
    """

    def __init__(self, ssl_context: ssl.SSLContext, *, max_connections: int, keepalive_expiry: float = 30.0) -> None:
        self._ssl = ssl_context
        self._max_connections = max_connections
        self._keepalive = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

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
        # The connect timeout only. Read timeouts are the caller's: the fetcher's RequestClock
        # watches every request's silence with one timer, where aiohttp's sock_read sets a new
        # timer on every chunk received (request_clock.py has the measurement).
        connect = (request.extensions.get("timeout") or {}).get("connect")
        timeout = self._timeouts.get(connect)
        if timeout is None:  # the engine sends the same value: one object, not one per request
            timeout = self._timeouts[connect] = aiohttp.ClientTimeout(total=None, sock_connect=connect)
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        try:
            response = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),  # httpx has already parsed and encoded it
                headers=_header_items(request.headers),
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
