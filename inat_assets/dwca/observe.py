"""Has the archive changed? A cheap look at INAT_DWCA_SOURCE that downloads nothing.

A local file is identified by its size and modification time (a republished archive copied over the
old one changes both; reading 25 GB to hash it would take minutes every week). A URL is asked with a
conditional HEAD carrying the validators of the previous look (If-None-Match / If-Modified-Since):
304 means unchanged; otherwise the new ETag (or Last-Modified and Content-Length) identifies it.
The resulting `ArchiveFingerprint.version` is the Dagster data version of the `dwca_source` asset,
so the archive and everything below it rebuild only when the version changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from inat_assets.dwca.archive import ArchiveError
from inat_assets.dwca.source import archive_http_client, is_url, last_modified_iso


@dataclass(frozen=True)
class ArchiveFingerprint:
    """What identifies one published version of the archive."""

    version: str  # the data version: equal strings mean the same archive
    source: str
    size: int | None = None  # bytes (file) or Content-Length (URL), if known
    modified: str | None = None  # ISO 8601: file mtime, or the HTTP Last-Modified
    etag: str | None = None
    last_modified: str | None = None  # the raw HTTP Last-Modified, sent back as If-Modified-Since
    not_modified: bool = False  # the server answered 304 to the conditional HEAD


def observe_archive(
    source: str, *, previous: ArchiveFingerprint | None = None, client: httpx.Client | None = None
) -> ArchiveFingerprint:
    """Fingerprint ``source`` (a path or an http(s) URL) without reading or downloading it."""
    if not is_url(source):
        return _observe_file(source)
    own_client = client is None
    client = client or archive_http_client("archive check")
    try:
        return _observe_url(source, previous if previous and previous.source == source else None, client)
    finally:
        if own_client:
            client.close()


def _observe_file(source: str) -> ArchiveFingerprint:
    path = Path(source).expanduser()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ArchiveError(
            f"INAT_DWCA_SOURCE={source!r}: cannot read it ({exc.strerror}). Give the path of the "
            "downloaded gbif-observations-dwca.zip, or an http(s) URL."
        ) from exc
    modified = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
    return ArchiveFingerprint(
        version=f"file:{stat.st_size}:{stat.st_mtime_ns}", source=source, size=stat.st_size, modified=modified
    )


def _observe_url(url: str, previous: ArchiveFingerprint | None, client: httpx.Client) -> ArchiveFingerprint:
    headers = {"Accept-Encoding": "identity"}  # Content-Length must be the archive's size
    if previous and previous.etag:
        headers["If-None-Match"] = previous.etag
    if previous and previous.last_modified:
        headers["If-Modified-Since"] = previous.last_modified
    try:
        response = client.head(url, headers=headers)
    except httpx.TransportError as exc:
        raise ArchiveError(f"Could not reach {url} to check for a new archive: {exc}. The next check retries.") from exc
    if response.status_code == 304 and previous:
        return ArchiveFingerprint(**{**previous.__dict__, "not_modified": True})
    if response.status_code != 200:
        raise ArchiveError(
            f"HEAD {url} answered HTTP {response.status_code} {response.reason_phrase}. Check INAT_DWCA_SOURCE."
        )
    etag = response.headers.get("ETag")
    last_modified = response.headers.get("Last-Modified")
    length = response.headers.get("Content-Length")
    size = int(length) if length and length.isdigit() else None
    if etag:
        version = f"etag:{etag}"
    elif last_modified:
        version = f"last-modified:{last_modified}:{size}"
    else:
        raise ArchiveError(
            f"{url} sends neither ETag nor Last-Modified, so a new archive cannot be told from the old one. "
            "Download it yourself and set INAT_DWCA_SOURCE to the file."
        )
    return ArchiveFingerprint(
        version=version,
        source=url,
        size=size,
        modified=last_modified_iso(last_modified),
        etag=etag,
        last_modified=last_modified,
    )
