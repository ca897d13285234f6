"""A local stand-in for iNaturalist's photo hosts: HTTP/1.1 with keep-alive, plus fault injection.

Used by the tests, by ``inat-assets demo`` and by ``bench/download.py``; it depends on nothing but
the standard library. It serves ``GET /photos/<id>/<size>.<ext>`` with deterministic, decodable
images (``served_bytes`` returns the exact bytes for a photo, so callers can compare downloads
byte for byte) and counts hits per path, and per listening host the requests (with their times) and
the body bytes served: what a host's rate and byte budgets are measured against.

Faults are given per photo id as a list of behaviours applied to successive requests for that
photo; the last behaviour repeats once the list is used up (``["503", "ok"]`` fails once, then
serves). Behaviours:

``ok``                 the image, with Content-Length
``<code>[:<secs>]``    that status with a short text body, and ``Retry-After: <secs>`` if given
                       (``404``, ``403``, ``410``, ``429:2``, ``500``, ``503:1`` ...)
``xml[<code>]``        an S3-style XML error body, status 200 unless a code is given (``xml429``)
``html``               200 with an HTML page (what a login wall or error page looks like)
``redirect:<url>``     302 to any URL
``reset``              read the request, then reset the TCP connection (RST)
``close``              close the connection without answering
``truncate``           headers with the full Content-Length, half the body, then close
``nolength``           the image without Content-Length, delimited by closing the connection
``slow:<secs>``        wait that long, then serve the image
``stall``              headers and half the body, then nothing (the client must time out)
``gzip``               the image gzip-compressed, with ``Content-Encoding: gzip`` (a server that
                       ignores ``Accept-Encoding: identity``)
``gzipbomb[:<MB>]``    ``Content-Encoding: gzip, gzip``: about 2.4 KB that inflate to 1,000 MB
                       (or <MB>) of zeros
``encoded:<name>``     the image bytes labelled ``Content-Encoding: <name>`` (``br``, ``zstd``, ...)
``endless``            a JPEG start, then filler for as long as the client reads (no Content-Length)
``stub``               200 with the 3 bytes ``FF D8 FF`` (a JPEG signature and nothing else)
``garbage``            the image's first 64 bytes, then random bytes up to its size (full length)
``cut``                the image's first half, with a Content-Length that matches (a truncated file
                       on the server, which no transfer check can notice)

Run it on its own with ``python -m inat_assets.testing.mirror --host 127.0.0.1 --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import random
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress

DEFAULT_IMAGE_BYTES = 40_000
_PHOTO_PATH = re.compile(r"^/photos/(\d+)/([A-Za-z_]+)\.([A-Za-z0-9]+)$")
_MAX_HEADER_BYTES = 64 * 1024

Faults = Mapping[int, Sequence[str]]


# --- Deterministic images ---------------------------------------------------------------------

def _filler(photo_id: int, size: str, length: int) -> bytes:
    """``length`` bytes unique to (photo, size): a text label, then a repeated digest."""
    label = f"inat-assets mirror photo {photo_id} {size} ".encode()
    digest = hashlib.blake2b(label, digest_size=64).digest()
    # A JPEG marker inside a COM segment is harmless (the segment has a length), but keep 0xFF out
    # anyway so naive scanners that look for markers are not confused.
    digest = digest.replace(b"\xff", b"\xfe")
    body = label + digest * (length // len(digest) + 1)
    return body[:length]


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


# An 8x8 grey baseline JPEG: one component, quantisation table of ones, one-code Huffman tables
# (DC difference category 0, AC end-of-block), entropy data "00" padded with ones.
_JPEG_HEAD = b"\xff\xd8" + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
_JPEG_TAIL = (
    _segment(0xDB, b"\x00" + b"\x01" * 64)
    + _segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")
    + _segment(0xC4, b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00")
    + _segment(0xC4, b"\x10" + b"\x01" + b"\x00" * 15 + b"\x00")
    + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    + b"\x3f"
    + b"\xff\xd9"
)


def _jpeg(photo_id: int, size: str, total: int) -> bytes:
    remaining = max(total - len(_JPEG_HEAD) - len(_JPEG_TAIL), 16)
    filler = _filler(photo_id, size, remaining)
    comments, pos = [], 0
    # A COM segment holds at most 65,533 payload bytes (the length field counts itself) plus 4
    # bytes of marker and length, so large paddings take several segments.
    while remaining > 4:
        take = min(remaining - 4, 65_533)
        comments.append(_segment(0xFE, filler[pos : pos + take]))
        pos += take
        remaining -= take + 4
    return _JPEG_HEAD + b"".join(comments) + _JPEG_TAIL


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(photo_id: int, size: str, total: int) -> bytes:
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))  # 1x1 grey
    idat = _png_chunk(b"IDAT", zlib.compress(bytes([0, photo_id % 256])))
    iend = _png_chunk(b"IEND", b"")
    fixed = 8 + len(ihdr) + len(idat) + len(iend) + 12 + len(b"Comment\x00")
    text = _png_chunk(b"tEXt", b"Comment\x00" + _filler(photo_id, size, max(total - fixed, 16)))
    return b"\x89PNG\r\n\x1a\n" + ihdr + text + idat + iend


def _gif(photo_id: int, size: str, total: int) -> bytes:
    head = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    image = b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"
    filler = _filler(photo_id, size, max(total - len(head) - len(image) - 4, 16))
    blocks = b"".join(bytes([len(c)]) + c for c in (filler[i : i + 255] for i in range(0, len(filler), 255)))
    return head + b"\x21\xfe" + blocks + b"\x00" + image + b"\x3b"


def served_bytes(
    photo_id: int, size: str = "original", ext: str = "jpg", image_bytes: int = DEFAULT_IMAGE_BYTES
) -> bytes:
    """The exact bytes the mirror serves for ``/photos/<photo_id>/<size>.<ext>`` (``ok`` behaviour).

    ``png`` and ``gif`` give those formats; every other extension gives a JPEG (iNaturalist's
    extensions do not always match the bytes either).
    """
    kind = ext.lower()
    if kind == "png":
        return _png(photo_id, size, image_bytes)
    if kind == "gif":
        return _gif(photo_id, size, image_bytes)
    return _jpeg(photo_id, size, image_bytes)


@functools.lru_cache(maxsize=4)
def gzip_bomb(megabytes: int = 1000) -> bytes:
    """``megabytes`` MiB of zeros, gzipped twice (for ``Content-Encoding: gzip, gzip``).

    The inner stream is built from one fully flushed deflate segment per MiB (each segment stands
    alone, so they repeat byte for byte) instead of compressing a gigabyte: 0.6 s instead of 8 s.
    """
    mib = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    segment = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(megabytes):
        crc = zlib.crc32(mib, crc)
    inner = (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + first + segment * (megabytes - 1) + deflate.flush()
        + struct.pack("<II", crc, (megabytes << 20) & 0xFFFFFFFF)
    )
    outer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return outer.compress(inner) + outer.flush()


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _endless(photo_id: int) -> Iterator[bytes]:
    """A JPEG start, then filler without end (the ``endless`` behaviour)."""
    yield _JPEG_HEAD
    block = _filler(photo_id, "endless", 64 * 1024)
    while True:
        yield block


# --- The server -------------------------------------------------------------------------------

_REASONS = {
    200: "OK", 302: "Found", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 410: "Gone",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}
_HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Not an image</body></html>"
_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def _head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Connection(asyncio.Protocol):
    """One client connection; answers requests one at a time (clients here never pipeline)."""

    def __init__(self, server: MirrorServer, host: str) -> None:
        self.server = server
        self.host = host
        self.buffer = b""
        self.busy = False
        self.transport: asyncio.Transport | None = None
        self.stream: Iterator[bytes] | None = None  # a body written as the client reads it
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.stream = None
        self.server._connections.discard(self)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._pump()

    def _pump(self) -> None:
        """Write the streamed body while the client keeps reading (flow control, bounded buffer)."""
        while self.stream is not None and self.transport is not None and not self.writing_paused:
            self.transport.write(next(self.stream))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEADER_BYTES and self.transport:
                self.transport.close()
            return
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        keep_alive = not any(
            line.lower().startswith("connection:") and "close" in line.lower() for line in lines[1:]
        )
        if len(parts) != 3:
            self._send(_head(400, [("Content-Length", "0"), ("Connection", "close")]), close=True)
            return
        self.busy = True
        delay = self.server.latency
        behaviour, path = self.server._behaviour_for(self.host, parts[1])
        if behaviour.startswith("slow"):
            delay += float(behaviour.partition(":")[2] or 1.0)
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self._respond, behaviour, path, keep_alive)
        else:
            self._respond(behaviour, path, keep_alive)

    def _send(self, data: bytes, *, close: bool, body: int = 0) -> None:
        """Write ``data`` (headers and ``body`` bytes of body) and count the body for this host."""
        if self.transport is None:
            return
        self.server.host_body_bytes[self.host] += body
        self.transport.write(data)
        if close:
            self.transport.close()

    def _respond(self, behaviour: str, path: str, keep_alive: bool) -> None:
        self.busy = False
        if self.transport is None:
            return
        name, _, arg = behaviour.partition(":")
        conn = [("Connection", "keep-alive" if keep_alive else "close")]
        if name in ("ok", "slow", "truncate", "stall", "nolength"):
            match = _PHOTO_PATH.match(path)
            if match is None:
                return self._simple(404, conn, keep_alive)
            pid, size, ext = int(match[1]), match[2], match[3]
            body = served_bytes(pid, size, ext, self.server.image_bytes)
            ctype = {"png": "image/png", "gif": "image/gif"}.get(ext.lower(), "image/jpeg")
            if name == "nolength":
                self._send(_head(200, [("Content-Type", ctype), ("Connection", "close")]) + body, close=True, body=len(body))
                return None
            head = _head(200, [("Content-Type", ctype), ("Content-Length", str(len(body))), *conn])
            if name == "truncate":
                self._send(head + body[: len(body) // 2], close=True, body=len(body) // 2)
            elif name == "stall":
                self._send(head + body[: len(body) // 2], close=False, body=len(body) // 2)  # and never finish
            else:
                self._send(head + body, close=not keep_alive, body=len(body))
                if keep_alive:
                    self._next_request()
            return None
        if name in ("gzip", "encoded", "stub", "garbage", "cut"):
            return self._mangled(name, arg, path, conn, keep_alive)
        if name == "gzipbomb":
            bomb = gzip_bomb(int(arg or 1000))
            return self._simple(200, [("Content-Encoding", "gzip, gzip"), *conn], keep_alive, bomb, "image/jpeg")
        if name == "endless":
            match = _PHOTO_PATH.match(path)
            self._send(_head(200, [("Content-Type", "image/jpeg"), ("Connection", "close")]), close=False)
            self.stream = _endless(int(match[1]) if match else 0)
            self._pump()
            return None
        if name == "reset":
            sock = self.transport.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close() sends RST instead of FIN
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return None
        if name == "close":
            self.transport.close()
            return None
        if name == "html":
            return self._simple(200, conn, keep_alive, _HTML, "text/html; charset=utf-8")
        if name.startswith("xml"):
            status = int(name[3:] or 200)
            return self._simple(status, conn, keep_alive, _XML, "application/xml")
        if name == "redirect":
            return self._simple(302, [("Location", arg), *conn], keep_alive)
        if name.isdigit():
            extra = [("Retry-After", arg)] if arg else []
            return self._simple(int(name), extra + conn, keep_alive)
        return self._simple(500, conn, keep_alive, f"unknown behaviour {behaviour!r}".encode())

    def _mangled(self, name: str, arg: str, path: str, conn: list[tuple[str, str]], keep_alive: bool) -> None:
        """The image, encoded or damaged as the behaviour says, with a matching Content-Length."""
        match = _PHOTO_PATH.match(path)
        if match is None:
            return self._simple(404, conn, keep_alive)
        pid, size, ext = int(match[1]), match[2], match[3]
        image = served_bytes(pid, size, ext, self.server.image_bytes)
        headers = conn
        if name == "gzip":
            body, headers = _gzip(image), [("Content-Encoding", "gzip"), *conn]
        elif name == "encoded":
            body, headers = image, [("Content-Encoding", arg or "br"), *conn]
        elif name == "stub":
            body = b"\xff\xd8\xff"
        elif name == "garbage":
            body = image[:64] + random.Random(pid).randbytes(len(image) - 64)
        else:  # cut
            body = image[: len(image) // 2]
        ctype = {"png": "image/png", "gif": "image/gif"}.get(ext.lower(), "image/jpeg")
        return self._simple(200, headers, keep_alive, body, ctype)

    def _simple(
        self,
        status: int,
        headers: list[tuple[str, str]],
        keep_alive: bool,
        body: bytes | None = None,
        ctype: str = "text/plain",
    ) -> None:
        if body is None:
            body = f"{status} {_REASONS.get(status, '')}".encode()
        head = _head(status, [("Content-Type", ctype), ("Content-Length", str(len(body))), *headers])
        self._send(head + body, close=not keep_alive, body=len(body))
        if keep_alive:
            self._next_request()


class MirrorServer:
    """The state shared by every listening address: settings, fault plan and hit counters.

    Counters are written by the server thread and read by tests; single dict operations are atomic
    in CPython, which is all the reading side needs.
    """

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        image_bytes: int = DEFAULT_IMAGE_BYTES,
        faults: Faults | None = None,
        host_faults: Mapping[str, Faults] | None = None,
    ) -> None:
        self.latency = latency_ms / 1000.0
        self.image_bytes = image_bytes
        self.faults: dict[int, list[str]] = {k: list(v) for k, v in (faults or {}).items()}
        self.host_faults = {h: {k: list(v) for k, v in f.items()} for h, f in (host_faults or {}).items()}
        self.path_hits: Counter[str] = Counter()
        self.host_path_hits: Counter[tuple[str, str]] = Counter()
        self.host_body_bytes: Counter[str] = Counter()  # body bytes written per listening host
        self.request_log: list[tuple[float, str, str]] = []  # (time.monotonic(), host, path) of each request
        self._fault_counts: Counter[tuple[str, int]] = Counter()
        self.addresses: list[tuple[str, int]] = []
        self.scheme = "http"
        self._connections: set[_Connection] = set()

    # Results for tests ------------------------------------------------------------------------
    @property
    def total_hits(self) -> int:
        return sum(self.path_hits.values())

    def hits(self, path: str, host: str | None = None) -> int:
        """Requests seen for ``path`` (``/photos/17/original.jpg``), on one host or on all."""
        return self.host_path_hits[(host, path)] if host else self.path_hits[path]

    def request_times(self, host: str) -> list[float]:
        """When each request to ``host`` arrived (time.monotonic()), in arrival order."""
        return [t for t, h, _ in list(self.request_log) if h == host]

    def base_url(self, host: str | None = None) -> str:
        """``http://<host>:<port>`` of one listening address (the first one by default)."""
        for addr, port in self.addresses:
            if host is None or addr == host:
                return f"{self.scheme}://{addr}:{port}"
        raise KeyError(f"the mirror does not listen on {host!r}; it listens on {self.addresses}")

    def url(self, photo_id: int, size: str = "original", ext: str = "jpg", host: str | None = None) -> str:
        return f"{self.base_url(host)}/photos/{photo_id}/{size}.{ext}"

    def set_faults(self, faults: Faults, host: str | None = None) -> None:
        """Replace the fault plan (for all hosts, or for one host) and restart its request counts."""
        plan = {k: list(v) for k, v in faults.items()}
        if host is None:
            self.faults = plan
        else:
            self.host_faults[host] = plan
        self._fault_counts.clear()

    # Used by connections ----------------------------------------------------------------------
    def _behaviour_for(self, host: str, target: str) -> tuple[str, str]:
        path = target.split("?", 1)[0]
        self.request_log.append((time.monotonic(), host, path))
        self.path_hits[path] += 1
        self.host_path_hits[(host, path)] += 1
        match = _PHOTO_PATH.match(path)
        if match is None:
            return "404", path
        pid = int(match[1])
        for scope, plan in ((host, self.host_faults.get(host, {})), ("*", self.faults)):
            steps = plan.get(pid)
            if steps:
                index = self._fault_counts[(scope, pid)]
                self._fault_counts[(scope, pid)] += 1
                return steps[min(index, len(steps) - 1)], path
        return "ok", path

    async def start(
        self, hosts: Sequence[str], port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> list[asyncio.Server]:
        """Listen on every host; with port 0 the first host picks a free port and the others share it."""
        loop = asyncio.get_running_loop()
        servers = []
        self.scheme = "https" if ssl_context else "http"
        for host in hosts:
            srv = await loop.create_server(
                lambda host=host: _Connection(self, host), host, port, reuse_address=True, backlog=1024,
                ssl=ssl_context,
            )
            port = srv.sockets[0].getsockname()[1]
            self.addresses.append((host, port))
            servers.append(srv)
        return servers

    def close_connections(self) -> None:
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()


@contextmanager
def serve_mirror(
    hosts: Sequence[str] = ("127.0.0.1",),
    port: int = 0,
    *,
    latency_ms: float = 0.0,
    image_bytes: int = DEFAULT_IMAGE_BYTES,
    faults: Faults | None = None,
    host_faults: Mapping[str, Faults] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[MirrorServer]:
    """Run a mirror in a background thread (its own event loop) for the duration of the block.

    With ``ssl_context`` (a server context holding a certificate) it speaks HTTPS instead.

    Every host in ``hosts`` (any 127.x.x.x address works on Linux without setup) listens on the same
    port, so swapping the host part of a URL, as the engine's other-host fallback does, keeps it valid.
    """
    mirror = MirrorServer(latency_ms=latency_ms, image_bytes=image_bytes, faults=faults, host_faults=host_faults)
    ready = threading.Event()
    state: dict[str, object] = {}
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            state["servers"] = loop.run_until_complete(mirror.start(hosts, port, ssl_context))
        except BaseException as exc:
            state["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()
        for srv in state["servers"]:  # type: ignore[union-attr]
            srv.close()
        mirror.close_connections()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    thread = threading.Thread(target=run, name="inat-mirror", daemon=True)
    thread.start()
    ready.wait(10)
    if "error" in state:
        raise RuntimeError(f"mirror could not listen on {hosts}:{port}") from state["error"]  # type: ignore[arg-type]
    try:
        yield mirror
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inat_assets.testing.mirror", description=__doc__.split("\n")[0])
    parser.add_argument("--host", action="append", help="address to listen on (repeatable; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every response")
    parser.add_argument("--image-bytes", type=int, default=DEFAULT_IMAGE_BYTES, help="size of served images")
    parser.add_argument("--faults", default="{}", help='JSON: {"17": ["429:2", "ok"], ...}')
    args = parser.parse_args(argv)
    faults = {int(k): v for k, v in json.loads(args.faults).items()}
    mirror = MirrorServer(latency_ms=args.latency_ms, image_bytes=args.image_bytes, faults=faults)

    async def serve() -> None:
        servers = await mirror.start(args.host or ["127.0.0.1"], args.port)
        for host, port in mirror.addresses:
            # The benchmark and tests parse this line to learn the port.
            print(f"serving http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for srv in servers:
            srv.close()
        print(f"served {mirror.total_hits} requests", file=sys.stderr, flush=True)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
