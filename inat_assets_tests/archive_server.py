"""A local HTTP server for archive-download tests: ETag, Last-Modified, Range/If-Range, truncation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ArchiveServerState:
    body: bytes
    etag: str = '"v1"'
    last_modified: str = "Wed, 21 Oct 2026 07:28:00 GMT"
    truncate_next: int = 0  # the next N full responses send only half the body, then close
    unavailable_next: int = 0  # the next N requests get 503
    requests: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@contextmanager
def serve_archive(state: ArchiveServerState) -> Iterator[str]:
    """Serve ``state.body`` at http://127.0.0.1:<port>/gbif-observations-dwca.zip; yields that URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: object) -> None:
            pass

        def _send(self, status: int, headers: dict[str, str], body: bytes, cut: bool = False) -> None:
            state.statuses.append(status)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)
            if cut:
                self.close_connection = True

        def do_GET(self) -> None:
            state.requests.append(dict(self.headers.items()))
            if self.path != "/gbif-observations-dwca.zip":
                self._send(404, {"Content-Length": "9"}, b"not found")
                return
            if state.unavailable_next > 0:
                state.unavailable_next -= 1
                self._send(503, {"Content-Length": "4", "Retry-After": "1"}, b"busy")
                return
            common = {"ETag": state.etag, "Last-Modified": state.last_modified, "Accept-Ranges": "bytes"}
            if self.headers.get("If-None-Match") == state.etag:
                self._send(304, {**common, "Content-Length": "0"}, b"")
                return
            body, status = state.body, 200
            range_header = self.headers.get("Range")
            if range_header and self.headers.get("If-Range") in (state.etag, state.last_modified):
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                body, status = state.body[start:], 206
                common["Content-Range"] = f"bytes {start}-{len(state.body) - 1}/{len(state.body)}"
            cut = state.truncate_next > 0
            if cut:
                state.truncate_next -= 1
            self._send(status, {**common, "Content-Length": str(len(body))}, body, cut=cut)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/gbif-observations-dwca.zip"
    finally:
        server.shutdown()
        server.server_close()
