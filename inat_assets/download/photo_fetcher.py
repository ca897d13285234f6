"""Fetching one photo: the URL checks, redirects, retries, fallback host and body validation."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import random
import re
import time
import zlib
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from inat_assets.download.config import (
    ANY_PORT,
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    OK,
    DownloadConfig,
    body_budget,
    parse_allowed_host,
)
from inat_assets.download.files import ImageInfo, check_image, describe_non_image, sniff_image
from inat_assets.download.network import BodyBudget, BodyTooLarge, CappedDecoder
from inat_assets.download.politeness import HostGate, HostGates, WaitNote
from inat_assets.download.request_clock import RequestClock, RequestLimit
from inat_assets.download.url_parse import DEFAULT_PORTS, parse_url

log = logging.getLogger("inat_assets.download")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_THROTTLED = frozenset({429, 503})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})  # plus every 5xx
_PHOTO_PATH = re.compile(r"(?:^|/)photos/\d+/[A-Za-z_]+\.[A-Za-z0-9]+$")
_ERROR_BODY_CAP = 64 * 1024  # read this much of an error body to keep the connection reusable
_SNIFF_BYTES = 16
_NO_BODY = httpx.ByteStream(b"")


@dataclass(slots=True)
class FetchResult:
    """How one photo's fetch ended.

    ``url`` is the last URL requested: after redirects, where the bytes came from. ``body`` still
    holds ``reserved`` bytes of the run's BodyBudget: hand them back with ``Fetcher.release`` once
    the body is written or dropped, so bodies waiting for a write stay inside the budget.
    """

    status: str  # OK, FAILED_PERMANENT or FAILED_TRANSIENT
    url: str
    http_status: int | None = None
    body: bytes | None = None
    ext: str | None = None
    content_type: str | None = None
    attempts: int = 0
    error: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None  # hex digest of body, computed while it arrived
    reserved: int = 0  # bytes of the BodyBudget the body holds until Fetcher.release


@dataclass(slots=True)
class _Hop:
    """What one request (one redirect hop) ended with."""

    kind: str  # "ok", "redirect", "permanent", "transient"
    http_status: int | None = None
    error: str | None = None
    body: bytes | None = None
    image: ImageInfo | None = None
    content_type: str | None = None
    location: str | None = None
    retry_after: float | None = None
    host: str = ""
    url: str = ""  # the URL this hop requested
    reserved: int = 0  # bytes of the BodyBudget this hop's body holds
    sha256: str | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def host_not_allowed(host: str) -> str:
    return f"host not allowed: {host}; allow it with --allow-host or INAT_ALLOWED_HOSTS"


class HostAllowlist:
    """Which host and port a URL may reach.

    Entries: ``host`` allows that host on its scheme's default port (80 for http, 443 for https);
    ``host:port`` only that port; ``host:*`` any port (a local mirror on a random port, the tests).
    IPv6 addresses go in brackets (``[::1]:8080``). Ports matter because one host runs more than
    one service: allowing a photo host must not let a redirect reach its port 22 or 6379.
    """

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.default_port: set[str] = set()
        self.any_port: set[str] = set()
        self.ports: set[tuple[str, int]] = set()
        for entry in entries:
            host, port = parse_allowed_host(entry)
            if port is None:
                self.default_port.add(host)
            elif port == ANY_PORT:
                self.any_port.add(host)
            else:
                self.ports.add((host, port))

    def allows(self, scheme: str, host: str, port: int | None) -> bool:
        default = DEFAULT_PORTS[scheme]
        effective = default if port is None else port
        return (
            host in self.any_port
            or (host, effective) in self.ports
            or (effective == default and host in self.default_port)
        )

    @staticmethod
    def describe(scheme: str, host: str, port: int | None) -> str:
        """``host`` or ``host:port`` as an allowlist entry that would allow it."""
        name = f"[{host}]" if ":" in host else host
        return name if port is None or port == DEFAULT_PORTS[scheme] else f"{name}:{port}"


class Fetcher:
    """Fetches photos over transports the caller owns (one per worker, see network.py)."""

    def __init__(self, config: DownloadConfig, note: WaitNote | None = None) -> None:
        self.config = config
        self.allowed = HostAllowlist(config.allowed_hosts)
        self.note = note
        self.gates = HostGates(config.host_budget)  # per-host pacing, budgets and pauses (shared if a ledger)
        self.budget = BodyBudget(body_budget(config))
        self.clock = RequestClock()  # request deadlines and read timeouts (request_clock.py)
        self.headers = [
            (b"User-Agent", config.user_agent.encode("ascii")),
            (b"Accept", b"image/*,*/*;q=0.5"),
            # Ask for the original bytes: no transfer compression to undo, lengths that match.
            (b"Accept-Encoding", b"identity"),
        ]
        self.timeouts = {
            "connect": config.connect_timeout,
            "read": config.read_timeout,
            "write": config.read_timeout,
            "pool": config.request_deadline,
        }

    def close(self) -> None:
        """Hand the byte records still queued to the shared ledger, if any, and close it."""
        self.gates.close()

    # URL rules ----------------------------------------------------------------------------------
    def check_url(self, url: str) -> tuple[str, str | None]:
        """``(host, None)`` for a URL we may fetch, else ``("", reason)``."""
        host, _, error = self._parse_allowed(url)
        return host, error

    def _parse_allowed(self, url: str) -> tuple[str, httpx.URL | None, str | None]:
        """``(host, parsed URL, None)`` for a URL we may fetch, else ``("", None, reason)``. The one
        parse of each URL: the request is built from it (url_parse: 2 us a plain URL, httpx's parser 20)."""
        try:
            parsed = parse_url(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            return "", None, "invalid URL"
        scheme = parsed.scheme  # lower case, as httpx normalises it
        if scheme not in DEFAULT_PORTS:
            return "", None, f"unsupported URL scheme {scheme or 'none'!r}: only http and https"
        host = parsed.host  # lower case, IPv6 without brackets
        if not host:
            return "", None, "URL has no host"
        port = parsed.port  # None for the scheme's default port
        if port is not None and not 0 <= port <= 65535:  # httpx parses any number
            return "", None, "invalid URL"
        if not self.allowed.allows(scheme, host, port):
            return "", None, host_not_allowed(self.allowed.describe(scheme, host, port))
        return host, parsed, None

    def other_host_url(self, url: str) -> str | None:
        """The same photos/<id>/<size>.<ext> path on the paired host, if it is allowed."""
        parts = urlsplit(url)
        other = self.config.other_hosts.get(parts.hostname or "")
        if not other or not _PHOTO_PATH.search(parts.path):
            return None
        netloc = other if parts.port is None else f"{other}:{parts.port}"
        candidate = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        return candidate if self.check_url(candidate)[1] is None else None

    def backoff(self, retry: int, retry_after: float | None) -> float:
        """Delay before retry number ``retry`` (1-based): Retry-After if given, else exponential."""
        cfg = self.config
        if retry_after is not None:
            # A little jitter so that many requests told "retry in 2 s" do not return together.
            return min(retry_after, cfg.retry_after_max) + random.uniform(0, min(cfg.backoff_base, 1.0))
        delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** (retry - 1))
        return random.uniform(delay / 2, delay)

    # One photo -----------------------------------------------------------------------------------
    async def fetch(self, url: str, transport: httpx.AsyncBaseTransport) -> FetchResult:
        host, parsed, error = self._parse_allowed(url)
        if parsed is None:
            return FetchResult(FAILED_PERMANENT, url, error=error)
        attempts = retries = 0
        first_error: str | None = None  # the first host's answer, once we tried the other host
        while True:
            attempts += 1
            hop = await self._follow(url, parsed, host, transport)
            if hop.kind == "ok" and hop.image is not None:
                image = hop.image  # the reservation goes with the body (see FetchResult)
                return FetchResult(OK, hop.url, 200, hop.body, image.ext, hop.content_type, attempts,
                                   width=image.width, height=image.height, sha256=hop.sha256,
                                   reserved=hop.reserved)
            if hop.reserved:
                self.budget.release(hop.reserved)
            if hop.kind == "permanent":
                if hop.http_status in (403, 404) and first_error is None and self.config.try_other_host:
                    other = self.other_host_url(url)
                    if other:
                        first_error, url, retries = hop.error, other, 0
                        host, parsed, _ = self._parse_allowed(other)  # allowed: other_host_url checked
                        assert parsed is not None
                        continue
                return FetchResult(
                    FAILED_PERMANENT, hop.url or url, hop.http_status, content_type=hop.content_type,
                    attempts=attempts, error=self._with_first(first_error, hop.error),
                )
            retries += 1
            if retries > self.config.retries:
                return FetchResult(
                    FAILED_TRANSIENT, hop.url or url, hop.http_status, content_type=hop.content_type,
                    attempts=attempts, error=self._with_first(first_error, hop.error),
                )
            delay = self.backoff(retries, hop.retry_after)
            if hop.http_status in _THROTTLED:
                # The host asked everyone to slow down, not just this request: hold the whole
                # host; the next attempt waits in the gate along with every other request.
                self.gates.for_host(hop.host).pause(delay)
            else:
                await asyncio.sleep(delay)

    def release(self, result: FetchResult) -> None:
        """End the body's BodyBudget reservation (once it is written or dropped)."""
        if result.reserved:
            self.budget.release(result.reserved)
            result.reserved = 0

    @staticmethod
    def _with_first(first_error: str | None, error: str | None) -> str | None:
        return error if first_error is None else f"{first_error}; other host: {error}"

    async def _follow(self, url: str, parsed: httpx.URL, host: str, transport: httpx.AsyncBaseTransport) -> _Hop:
        """One attempt: the request and its redirects, each hop checked against the allowlist."""
        for _ in range(self.config.max_redirects + 1):
            hop = await self._request(parsed, host, transport)
            hop.host, hop.url = host, url
            if hop.kind != "redirect":
                return hop
            target = urljoin(url, hop.location or "")
            target_host, target_parsed, error = self._parse_allowed(target)
            if target_parsed is None:
                return _Hop("permanent", hop.http_status, f"redirect refused: {error}", host=host, url=url)
            url, parsed, host = target, target_parsed, target_host
        return _Hop("permanent", None, f"too many redirects (more than {self.config.max_redirects})",
                    host=host, url=url)

    async def _request(self, url: httpx.URL, host: str, transport: httpx.AsyncBaseTransport) -> _Hop:
        gate = self.gates.for_host(host)
        await gate.acquire(self.config.limits_for(host), self.note)
        # With a stream given, httpx adds no headers of its own (Host, Content-Length, none of the
        # look-ups behind them): 6.6 instead of 15 us a request. Host is the one a GET needs.
        request = httpx.Request("GET", url, headers=[(b"Host", url.netloc), *self.headers], stream=_NO_BODY,
                                extensions={"timeout": self.timeouts})
        request.read()  # the empty body, as Request.content, like any request httpx built itself
        hop: _Hop | None = None
        try:
            try:
                # Every network wait sits under this deadline, whatever the server does (trickling
                # bytes just fast enough to dodge the read timeout included).
                async with self.clock.limit(self.config.request_deadline, self.config.read_timeout) as limit:
                    response = await transport.handle_async_request(request)
                    limit.heard()
                    try:
                        hop = await self._read(response, gate, limit)
                    finally:
                        await response.aclose()
                return hop
            except BaseException:
                if hop is not None and hop.reserved:  # a body read, then closing the response failed
                    self.budget.release(hop.reserved)
                raise
        except TimeoutError:
            return _Hop("transient", error=f"request deadline exceeded ({self.config.request_deadline:g} s)")
        except httpx.TimeoutException as exc:
            return _Hop("transient", error=type(exc).__name__)
        except httpx.UnsupportedProtocol as exc:
            return _Hop("permanent", error=f"unsupported protocol: {exc}")
        except httpx.RemoteProtocolError as exc:
            # Most often a body cut short ("peer closed connection without sending complete message
            # body") or a connection closed before the response.
            return _Hop("transient", error=f"RemoteProtocolError: {exc}")
        except httpx.TransportError as exc:
            return _Hop("transient", error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        except Exception as exc:
            # Anything else (an exception type httpx/httpcore do not map, say) must not end the
            # whole run: count it as transient, so it is retried a bounded number of times.
            log.warning("unexpected error fetching %s", url, exc_info=True)
            return _Hop("transient", error=f"unexpected {type(exc).__name__}: {exc}".rstrip(": "))

    async def _read(self, response: httpx.Response, gate: HostGate, limit: RequestLimit) -> _Hop:
        status = response.status_code
        headers = _fields(response)
        ctype = headers.get("content-type")
        if status in _REDIRECTS:
            location = response.headers.get("location")  # decoded as httpx decodes it (UTF-8 paths)
            if location:
                return _Hop("redirect", status, location=location)
            return _Hop("permanent", status, f"HTTP {status} redirect without Location", content_type=ctype)
        if status != 200:
            await self._drain(response, gate, limit)
            reason = f"HTTP {status} {response.reason_phrase}".rstrip()
            if status in _TRANSIENT_STATUSES or 500 <= status < 600:
                return _Hop("transient", status, reason, content_type=ctype,
                            retry_after=parse_retry_after(headers.get("retry-after")))
            return _Hop("permanent", status, reason, content_type=ctype)

        max_bytes = self.config.max_bytes
        length = _content_length(headers.get("content-length"))
        if length is not None and length > max_bytes:
            return _Hop("permanent", status, f"too large: Content-Length over max_bytes ({max_bytes})",
                        content_type=ctype)
        encoding = headers.get("content-encoding", "")
        codings = [c for c in (c.strip().lower() for c in encoding.split(",")) if c and c != "identity"]
        decoder: CappedDecoder | None = None
        if codings:
            # We asked for identity; a server that compresses anyway gets one gzip or deflate
            # layer undone under the size cap. Stacked layers are how compression bombs are made,
            # and no photo host sends them: refused, as is any coding we cannot cap (br, zstd).
            if len(codings) > 1:
                return _Hop("permanent", status, f"unsupported Content-Encoding {encoding[:40]!r} "
                            "(stacked encodings are refused)", content_type=ctype)
            if codings[0] not in CappedDecoder.DECODABLE:
                return _Hop("permanent", status, f"unsupported Content-Encoding {encoding[:40]!r} "
                            "(only gzip and deflate are decoded)", content_type=ctype)
            decoder = CappedDecoder(codings[0], max_bytes)
        # The body's room in the run's memory budget, taken whole before reading (see BodyBudget).
        limit.hold()  # waiting for our own budget is not the server's silence
        reserved = await self.budget.reserve(length if length is not None and decoder is None else max_bytes)
        limit.heard()
        try:
            hop = await self._read_body(response, gate, limit, decoder, length, ctype)
        except BaseException:
            self.budget.release(reserved)
            raise
        if hop.kind == "ok":
            hop.reserved = reserved
        else:
            self.budget.release(reserved)
        return hop

    async def _read_body(self, response: httpx.Response, gate: HostGate, limit: RequestLimit,
                         decoder: CappedDecoder | None, length: int | None, ctype: str | None) -> _Hop:
        status, max_bytes = response.status_code, self.config.max_bytes
        too_large = _Hop("permanent", status, f"too large: body over max_bytes ({max_bytes})", content_type=ctype)
        chunks: list[bytes] = []
        received = downloaded = 0
        # Hashed as the bytes arrive: writing the photo is then the only pass over it afterwards,
        # and a writer never needs the body for its digest (an object-store PUT can stream it).
        digest = hashlib.sha256()
        # The transport's stream: the bytes as sent (httpx's own decoders inflate without a cap),
        # with the transport's exceptions already mapped to httpx's. Response.aiter_raw adds only
        # bookkeeping around it, 5 % of the event loop's CPU at 0 ms latency (py-spy).
        async for raw in response.stream:  # type: ignore[union-attr]
            downloaded += len(raw)
            limit.heard()
            if decoder is None:
                chunk = raw
            else:
                try:
                    chunk = decoder.decode(raw)
                except BodyTooLarge:
                    gate.record(downloaded)
                    return too_large
                except zlib.error:
                    gate.record(downloaded)
                    return _Hop("permanent", status, "body could not be decoded (bad Content-Encoding)",
                                content_type=ctype)
                if not chunk:
                    continue
            received += len(chunk)
            if received > max_bytes:
                gate.record(downloaded)
                return too_large
            chunks.append(chunk)
            digest.update(chunk)
            if len(chunks) == 1 and len(chunk) >= _SNIFF_BYTES and sniff_image(chunk) is None:
                gate.record(downloaded)  # no point reading the rest of an error page
                return _Hop("permanent", status, describe_non_image(chunk, ctype), content_type=ctype)
        gate.record(downloaded)
        if length is not None and downloaded != length:
            return _Hop("transient", status, "truncated body (shorter than Content-Length)", content_type=ctype)
        if decoder is not None:
            try:
                tail = decoder.finish()
                chunks.append(tail)
                digest.update(tail)
            except BodyTooLarge:
                return too_large
            except (EOFError, zlib.error):
                return _Hop("transient", status, "truncated body (compressed stream incomplete)", content_type=ctype)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        image = check_image(body)
        if image is None:
            return _Hop("permanent", status, describe_non_image(body, ctype), content_type=ctype)
        if isinstance(image, ImageInfo):
            return _Hop("ok", status, body=body, image=image, content_type=ctype, sha256=digest.hexdigest())
        # Bytes that end too early are what a cut connection leaves when the server sent no
        # Content-Length (and what a server's own damaged file looks like): transient, so it is
        # retried and, if it stays broken, retried again by the next run instead of being given up
        # on. Malformed bytes (a valid signature, then garbage) will not change on a retry.
        return _Hop("transient" if image.truncated else "permanent", status, image.reason, content_type=ctype)

    @staticmethod
    async def _drain(response: httpx.Response, gate: HostGate, limit: RequestLimit) -> None:
        """Read a small error body so the connection can be reused; a large one is just dropped."""
        received = 0
        async for chunk in response.aiter_raw():
            limit.heard()
            received += len(chunk)
            if received > _ERROR_BODY_CAP:
                break
        gate.record(response.num_bytes_downloaded)


# The response fields the fetcher reads on every response (Location only on redirects).
_FIELDS = ("content-type", "content-length", "content-encoding", "retry-after")
_FIELD_KEYS = frozenset(name.encode() for name in _FIELDS)


def _fields(response: httpx.Response) -> dict[str, str]:
    """The fields of ``_FIELDS`` the response has, by lower-case name, repeats joined with ", " as
    ``Headers.get`` joins them. One pass over the raw fields instead of a scan per ``get`` and
    httpx's guess of the fields' text encoding (together 7 % of the event loop's CPU at 0 ms):
    photo hosts send ASCII, which every encoding httpx might pick decodes alike. If one of these
    values is not ASCII, httpx decodes them all."""
    found: dict[str, str] = {}
    for key, value in response.headers.raw:
        name = key.lower()
        if name in _FIELD_KEYS:
            if not value.isascii():
                return {field: text for field in _FIELDS if (text := response.headers.get(field)) is not None}
            field, text = name.decode(), value.decode()
            found[field] = f"{found[field]}, {text}" if field in found else text
    return found


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None
