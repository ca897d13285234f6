"""Fetching one photo: the URL checks, redirects, retries, fallback host and body validation."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from inat_assets.download.config import FAILED_PERMANENT, FAILED_TRANSIENT, OK, DownloadConfig
from inat_assets.download.files import describe_non_image, sniff_image
from inat_assets.download.politeness import HostGate, HostGates, WaitNote

log = logging.getLogger("inat_assets.download")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_THROTTLED = frozenset({429, 503})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})  # plus every 5xx
_PHOTO_PATH = re.compile(r"(?:^|/)photos/\d+/[A-Za-z_]+\.[A-Za-z0-9]+$")
_ERROR_BODY_CAP = 64 * 1024  # read this much of an error body to keep the connection reusable
_SNIFF_BYTES = 16


@dataclass(slots=True)
class FetchResult:
    status: str  # OK, FAILED_PERMANENT or FAILED_TRANSIENT
    url: str
    http_status: int | None = None
    body: bytes | None = None
    ext: str | None = None
    content_type: str | None = None
    attempts: int = 0
    error: str | None = None


@dataclass(slots=True)
class _Hop:
    """What one request (one redirect hop) ended with."""

    kind: str  # "ok", "redirect", "permanent", "transient"
    http_status: int | None = None
    error: str | None = None
    body: bytes | None = None
    ext: str | None = None
    content_type: str | None = None
    location: str | None = None
    retry_after: float | None = None
    host: str = ""


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


class Fetcher:
    """Fetches photos over transports the caller owns (one per worker, see network.py)."""

    def __init__(self, config: DownloadConfig, note: WaitNote | None = None) -> None:
        self.config = config
        self.allowed = frozenset(config.allowed_hosts)
        self.note = note
        self.gates = HostGates()  # this run's per-host pacing, budgets and pauses
        self.headers = [
            ("User-Agent", config.user_agent),
            ("Accept", "image/*,*/*;q=0.5"),
            # Ask for the original bytes: no transfer compression to undo, lengths that match.
            ("Accept-Encoding", "identity"),
        ]
        self.timeouts = {
            "connect": config.connect_timeout,
            "read": config.read_timeout,
            "write": config.read_timeout,
            "pool": config.request_deadline,
        }

    # URL rules ----------------------------------------------------------------------------------
    def check_url(self, url: str) -> tuple[str, str | None]:
        """``(host, None)`` for a URL we may fetch, else ``("", reason)``."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 -- raises ValueError for a malformed port
        except ValueError:
            return "", "invalid URL"
        if parts.scheme.lower() not in ("http", "https"):
            return "", f"unsupported URL scheme {parts.scheme or 'none'!r}: only http and https"
        if not host:
            return "", "URL has no host"
        if host not in self.allowed:
            return "", host_not_allowed(host)
        return host, None

    def other_host_url(self, url: str) -> str | None:
        """The same photos/<id>/<size>.<ext> path on the paired host, if it is allowed."""
        parts = urlsplit(url)
        other = self.config.other_hosts.get(parts.hostname or "")
        if not other or other not in self.allowed or not _PHOTO_PATH.search(parts.path):
            return None
        netloc = other if parts.port is None else f"{other}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

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
        host, error = self.check_url(url)
        if error:
            return FetchResult(FAILED_PERMANENT, url, error=error)
        attempts = retries = 0
        first_error: str | None = None  # the first host's answer, once we tried the other host
        while True:
            attempts += 1
            hop = await self._follow(url, host, transport)
            if hop.kind == "ok":
                return FetchResult(OK, url, 200, hop.body, hop.ext, hop.content_type, attempts)
            if hop.kind == "permanent":
                if hop.http_status in (403, 404) and first_error is None and self.config.try_other_host:
                    other = self.other_host_url(url)
                    if other:
                        first_error, url, retries = hop.error, other, 0
                        host = urlsplit(other).hostname or ""
                        continue
                return FetchResult(
                    FAILED_PERMANENT, url, hop.http_status, content_type=hop.content_type,
                    attempts=attempts, error=self._with_first(first_error, hop.error),
                )
            retries += 1
            if retries > self.config.retries:
                return FetchResult(
                    FAILED_TRANSIENT, url, hop.http_status, content_type=hop.content_type,
                    attempts=attempts, error=self._with_first(first_error, hop.error),
                )
            delay = self.backoff(retries, hop.retry_after)
            if hop.http_status in _THROTTLED:
                # The host asked everyone to slow down, not just this request: hold the whole
                # host; the next attempt waits in the gate along with every other request.
                self.gates.for_host(hop.host).pause(delay)
            else:
                await asyncio.sleep(delay)

    @staticmethod
    def _with_first(first_error: str | None, error: str | None) -> str | None:
        return error if first_error is None else f"{first_error}; other host: {error}"

    async def _follow(self, url: str, host: str, transport: httpx.AsyncBaseTransport) -> _Hop:
        """One attempt: the request and its redirects, each hop checked against the allowlist."""
        for _ in range(self.config.max_redirects + 1):
            hop = await self._request(url, host, transport)
            hop.host = host
            if hop.kind != "redirect":
                return hop
            url = urljoin(url, hop.location or "")
            host, error = self.check_url(url)
            if error:
                return _Hop("permanent", hop.http_status, f"redirect refused: {error}", host=host)
        return _Hop("permanent", None, f"too many redirects (more than {self.config.max_redirects})", host=host)

    async def _request(self, url: str, host: str, transport: httpx.AsyncBaseTransport) -> _Hop:
        gate = self.gates.for_host(host)
        await gate.acquire(self.config.limits_for(host), self.note)
        try:
            request = httpx.Request("GET", url, headers=self.headers, extensions={"timeout": self.timeouts})
        except (httpx.InvalidURL, ValueError):
            return _Hop("permanent", error="invalid URL")
        try:
            # Every network wait sits under this deadline, whatever the server does (trickling
            # bytes just fast enough to dodge the read timeout included).
            async with asyncio.timeout(self.config.request_deadline):
                response = await transport.handle_async_request(request)
                try:
                    return await self._read(response, gate)
                finally:
                    await response.aclose()
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
        except httpx.DecodingError:
            return _Hop("permanent", error="body could not be decoded (bad Content-Encoding)")
        except Exception as exc:
            # Anything else (an exception type httpx/httpcore do not map, say) must not end the
            # whole run: count it as transient, so it is retried a bounded number of times.
            log.warning("unexpected error fetching %s", url, exc_info=True)
            return _Hop("transient", error=f"unexpected {type(exc).__name__}: {exc}".rstrip(": "))

    async def _read(self, response: httpx.Response, gate: HostGate) -> _Hop:
        status = response.status_code
        headers = response.headers
        ctype = headers.get("content-type")
        if status in _REDIRECTS:
            location = headers.get("location")
            if location:
                return _Hop("redirect", status, location=location)
            return _Hop("permanent", status, f"HTTP {status} redirect without Location", content_type=ctype)
        if status != 200:
            await self._drain(response, gate)
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
        encoded = headers.get("content-encoding", "identity").lower() not in ("identity", "")
        # aiter_raw hands over the bytes as sent; only a server that ignored our Accept-Encoding
        # needs decoding (and then Content-Length counts the encoded bytes).
        stream = response.aiter_bytes() if encoded else response.aiter_raw()
        chunks: list[bytes] = []
        received = 0
        async for chunk in stream:
            received += len(chunk)
            if received > max_bytes:
                gate.record(response.num_bytes_downloaded)
                return _Hop("permanent", status, f"too large: body over max_bytes ({max_bytes})", content_type=ctype)
            chunks.append(chunk)
            if len(chunks) == 1 and len(chunk) >= _SNIFF_BYTES and sniff_image(chunk) is None:
                gate.record(response.num_bytes_downloaded)  # no point reading the rest of an error page
                return _Hop("permanent", status, describe_non_image(chunk, ctype), content_type=ctype)
        gate.record(response.num_bytes_downloaded)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        sent = response.num_bytes_downloaded if encoded else received
        if length is not None and sent != length:
            return _Hop("transient", status, "truncated body (shorter than Content-Length)", content_type=ctype)
        ext = sniff_image(body[:_SNIFF_BYTES])
        if ext is None:
            return _Hop("permanent", status, describe_non_image(body, ctype), content_type=ctype)
        return _Hop("ok", status, body=body, ext=ext, content_type=ctype)

    @staticmethod
    async def _drain(response: httpx.Response, gate: HostGate) -> None:
        """Read a small error body so the connection can be reused; a large one is just dropped."""
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > _ERROR_BODY_CAP:
                break
        gate.record(response.num_bytes_downloaded)


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None
