"""Get the archive: a local path is used in place; a URL is downloaded once and kept up to date.

A download streams to ``<name>.partial`` beside the final file, resumes with ``Range`` after an
interruption (guarded by ``If-Range`` so a changed archive restarts instead of being spliced),
and is renamed onto the final name only once its length is verified and it opens as a zip. The
validators (ETag / Last-Modified) are kept in ``<name>.json`` so the next run asks the server
with a conditional request and skips the download when the archive has not changed.

When the data directory is an object store, the download runs as above in a local cache folder
(scratch: resumable ``.partial`` files need appends and renames, which objects do not have); the
finished zip is then uploaded to ``<store>/archive/<name>`` and its validators after it, so a
``<name>.json`` on the store always describes a complete zip. A machine whose cache lacks that
version copies it from the store first (store to machine, not iNaturalist to machine), then asks
iNaturalist with the same conditional request. Readers (`local_archive`) get a local copy the same way.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from inat_assets import __version__
from inat_assets.dwca.archive import ArchiveError
from inat_assets.storage import StorePath, atomic_path, atomic_write_bytes, guarded
from inat_assets.store import Location

Log = Callable[[str], None]
_PROGRESS_SECONDS = 15.0


@dataclass(frozen=True)
class ArchiveSource:
    path: Path
    origin: str  # "local", "downloaded", "resumed" or "not-modified"
    url: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    bytes_downloaded: int = 0
    stored_at: str | None = None  # the archive's object when the data directory is on a store


def archive_http_client(purpose: str) -> httpx.Client:
    """The client for the archive's host: generous timeouts, redirects followed, our User-Agent."""
    return httpx.Client(
        timeout=httpx.Timeout(60.0, connect=20.0),
        headers={"User-Agent": f"inat-assets/{__version__} ({purpose})"},
        follow_redirects=True,
    )


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def resolve_archive(
    source: str,
    archive_dir: StorePath,
    *,
    log: Log = lambda _msg: None,
    client: httpx.Client | None = None,
    attempts: int = 5,
    backoff_seconds: float = 2.0,
    cache_dir: Path | None = None,
) -> ArchiveSource:
    """Return where the archive is, downloading or refreshing it first when ``source`` is a URL.

    ``archive_dir`` on an object store needs ``cache_dir``, a local folder (see the module docstring);
    the returned ``path`` is then the local copy and ``stored_at`` the object on the store.
    """
    if is_url(source) and isinstance(archive_dir, Location):
        if cache_dir is None:
            raise ValueError("an archive folder on an object store needs a local cache_dir")
        name = archive_location(source, cache_dir).name
        with guarded(archive_dir / f"{name}.lock", purpose=f"downloading {source}", wait_seconds=60):
            _copy_from_store(archive_dir, cache_dir, name, log)
            result = resolve_archive(
                source, cache_dir, log=log, client=client, attempts=attempts, backoff_seconds=backoff_seconds
            )
            _copy_to_store(cache_dir, archive_dir, name, log)
        return replace(result, stored_at=str(archive_dir / name))
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ArchiveError(
                f"INAT_DWCA_SOURCE={source!r}: no such file. Give the path of the downloaded "
                "gbif-observations-dwca.zip, or an http(s) URL."
            )
        return ArchiveSource(path=path.resolve(), origin="local")
    own_client = client is None
    client = client or archive_http_client("archive download")
    try:
        return _Downloader(source, archive_dir, client, log).run(attempts, backoff_seconds)
    finally:
        if own_client:
            client.close()


@dataclass
class _State:
    url: str
    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None


class _Downloader:
    def __init__(self, url: str, archive_dir: Path, client: httpx.Client, log: Log) -> None:
        self.url, self.client, self.log = url, client, log
        self.final = archive_location(url, archive_dir)
        name = self.final.name
        self.partial = archive_dir / f"{name}.partial"
        self.state_file = archive_dir / f"{name}.json"
        self.partial_state_file = archive_dir / f"{name}.partial.json"
        archive_dir.mkdir(parents=True, exist_ok=True)

    def run(self, attempts: int, backoff_seconds: float) -> ArchiveSource:
        resumed = False
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(resumed)
            except (httpx.TransportError, _Truncated) as exc:
                if attempt == attempts:
                    have = self.partial.stat().st_size if self.partial.exists() else 0
                    raise ArchiveError(
                        f"Download of {self.url} failed after {attempts} attempts: {exc}. "
                        f"{have:,} bytes are kept in {self.partial}; rerun to resume, or download the "
                        "zip yourself and set INAT_DWCA_SOURCE to its path."
                    ) from exc
                resumed = True
                wait = backoff_seconds * 2 ** (attempt - 1)
                self.log(
                    f"download interrupted ({exc}); retrying in {wait:.0f} s (attempt {attempt + 1}/{attempts})"
                )
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _attempt(self, resumed: bool) -> ArchiveSource:
        # identity: byte offsets and Content-Length must count the same bytes that land on disk.
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        known = _load_state(self.state_file) if self.final.exists() else None
        partial = _load_state(self.partial_state_file) if self.partial.exists() else None
        offset = self.partial.stat().st_size if partial else 0
        if partial and partial.size is not None and offset == partial.size:
            # Killed after the last byte but before the rename: nothing left to fetch.
            return self._finalize(partial, offset, offset, resumed=True)
        if partial and offset and (partial.etag or partial.last_modified):
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = partial.etag or partial.last_modified or ""
        elif known and known.url == self.url:
            if known.etag:
                headers["If-None-Match"] = known.etag
            if known.last_modified:
                headers["If-Modified-Since"] = known.last_modified
        with self.client.stream("GET", self.url, headers=headers) as response:
            status = response.status_code
            if status == 304 and known:
                self.log(f"{self.url} is unchanged since the last download (HTTP 304); using {self.final}")
                return ArchiveSource(self.final, "not-modified", self.url, known.etag, known.last_modified)
            if status == 429 or status >= 500:
                raise _Truncated(f"HTTP {status} {response.reason_phrase}")
            if status == 416 and partial:  # our Range no longer fits this file: start over
                self._discard_partial()
                raise _Truncated(f"HTTP 416 for bytes={offset}-; restarting the download")
            if status not in (200, 206):
                raise ArchiveError(
                    f"Download of {self.url} failed: HTTP {status} {response.reason_phrase}. "
                    "Check INAT_DWCA_SOURCE."
                )
            etag = response.headers.get("ETag")
            last_modified = response.headers.get("Last-Modified")
            content_range = response.headers.get("Content-Range")
            if status == 206 and _start_from_content_range(content_range) != offset:
                self._discard_partial()
                raise _Truncated(f"server answered {content_range!r} to bytes={offset}-; restarting the download")
            if status == 206:
                total = _total_from_content_range(content_range)
                mode = "ab"
                self.log(f"resuming {self.url} at byte {offset:,}")
            else:
                offset, mode = 0, "wb"
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            state = _State(self.url, etag, last_modified, total)
            atomic_write_bytes(self.partial_state_file, json.dumps(asdict(state)).encode())
            written = self._stream_body(response, mode, offset, total)
        if total is not None and written != total:
            raise _Truncated(f"received {written:,} of {total:,} bytes")
        return self._finalize(state, written, offset, resumed)

    def _discard_partial(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.partial_state_file.unlink(missing_ok=True)

    def _finalize(self, state: _State, written: int, offset: int, resumed: bool) -> ArchiveSource:
        """Check the finished .partial is a zip, rename it into place, keep its validators."""
        if not zipfile.is_zipfile(self.partial):
            self._discard_partial()
            raise ArchiveError(f"{self.url} did not return a zip archive; the partial file was deleted.")
        os.replace(self.partial, self.final)
        atomic_write_bytes(self.state_file, json.dumps(asdict(state)).encode())
        self.partial_state_file.unlink(missing_ok=True)
        self.log(f"downloaded {self.url} to {self.final} ({written:,} bytes)")
        return ArchiveSource(
            self.final,
            "resumed" if resumed or offset else "downloaded",
            self.url,
            state.etag,
            state.last_modified,
            written - offset,
        )

    def _stream_body(self, response: httpx.Response, mode: str, offset: int, total: int | None) -> int:
        written, started, last = offset, time.monotonic(), time.monotonic()
        with open(self.partial, mode) as out:
            try:
                for chunk in response.iter_raw():  # undecoded, as received: an interruption keeps every byte
                    out.write(chunk)
                    written += len(chunk)
                    now = time.monotonic()
                    if now - last >= _PROGRESS_SECONDS:
                        last = now
                        self.log(_progress(written - offset, written, total, now - started))
            except httpx.RemoteProtocolError as exc:  # connection closed before Content-Length
                raise _Truncated(f"connection closed at byte {written:,}: {exc}") from exc
        return written


class _Truncated(Exception):
    pass


def _load_state(path: Path) -> _State | None:
    try:
        return _State(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _start_from_content_range(value: str | None) -> int | None:
    # "bytes 100-999/1000" -> 100
    if value and value.startswith("bytes ") and "-" in value:
        start = value[6:].split("-", 1)[0]
        return int(start) if start.isdigit() else None
    return None


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes 100-999/1000"
    if value and "/" in value:
        total = value.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    return None


def _progress(new_bytes: int, have: int, total: int | None, elapsed: float) -> str:
    rate = new_bytes / elapsed if elapsed > 0 else 0.0
    if total:
        eta = (total - have) / rate if rate > 0 else float("nan")
        return f"archive download: {have / 1e9:.2f} of {total / 1e9:.2f} GB ({100 * have / total:.0f}%), {rate / 1e6:.1f} MB/s, ETA {eta / 60:.0f} min"
    return f"archive download: {have / 1e9:.2f} GB, {rate / 1e6:.1f} MB/s"


def last_modified_iso(value: str | None) -> str | None:
    """HTTP date -> ISO 8601 for metadata; None if absent or unparsable."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).isoformat()
    except (TypeError, ValueError):
        return None


def archive_location(source: str, archive_dir: StorePath) -> StorePath:
    """Where the archive for ``source`` is (or will be, once ``resolve_archive`` has run)."""
    if is_url(source):
        return archive_dir / (Path(urlsplit(source).path).name or "archive.zip")
    return Path(source).expanduser().resolve()


def local_archive(source: str, archive_dir: StorePath, cache_dir: Path, log: Log = lambda _msg: None) -> Path:
    """A local file with the archive `resolve_archive` stored: the archive itself, or a copy of the
    store's version in ``cache_dir`` (copied only when the cache lacks that version)."""
    location = archive_location(source, archive_dir)
    if not isinstance(location, Location):
        return location
    _copy_from_store(archive_dir, cache_dir, location.name, log)  # type: ignore[arg-type]
    return cache_dir / location.name


def _copy_from_store(archive_dir: Location, cache_dir: Path, name: str, log: Log) -> None:
    """Bring the store's version of the archive (zip and validators) into the cache, unless it is there."""
    try:
        stored = (archive_dir / f"{name}.json").read_bytes()
    except FileNotFoundError:
        return  # nothing stored yet
    local_state, local_zip = cache_dir / f"{name}.json", cache_dir / name
    if local_zip.is_file() and local_state.is_file() and local_state.read_bytes() == stored:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"copying {archive_dir / name} to {local_zip}")
    with atomic_path(local_zip) as tmp:
        archive_dir.fs.get_file((archive_dir / name).path, str(tmp))
    atomic_write_bytes(local_state, stored)


def _copy_to_store(cache_dir: Path, archive_dir: Location, name: str, log: Log) -> None:
    """Upload the cache's archive unless the store has that version; validators last (they vouch for the zip)."""
    state = (cache_dir / f"{name}.json").read_bytes()
    try:
        if (archive_dir / f"{name}.json").read_bytes() == state:
            return
    except FileNotFoundError:
        pass
    log(f"uploading {cache_dir / name} to {archive_dir / name}")
    (archive_dir / name).upload(cache_dir / name)
    (archive_dir / f"{name}.json").write_bytes(state)
