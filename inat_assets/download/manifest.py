"""The download manifest: one row per input photo, written incrementally as Parquet."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inat_assets.download.config import CACHED, OK
from inat_assets.storage import atomic_path

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("photo_id", pa.int64(), nullable=False),
        pa.field("url", pa.string()),  # the URL the bytes came from (the other host's after a fallback)
        pa.field("path", pa.string()),  # absolute path of the file; null unless ok/cached
        pa.field("status", pa.string(), nullable=False),  # ok, cached, failed_permanent, failed_transient
        pa.field("http_status", pa.int32()),  # last HTTP status seen; null if none (cached, network error)
        pa.field("bytes", pa.int64()),  # file size; null for failures
        pa.field("sha256", pa.string()),  # hex digest; null for failures, and for cached rows unknown before
        pa.field("content_type", pa.string()),  # as sent by the server
        pa.field("attempts", pa.int32(), nullable=False),  # requests made (0 for cached)
        pa.field("error", pa.string()),  # why it failed; null when ok/cached
        pa.field("seconds", pa.float64(), nullable=False),  # wall time spent on this photo
        # Pixels, from the image's header (files.check_image); null unless ok/cached.
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)

_ROWS_PER_GROUP = 8192


@dataclass(frozen=True, slots=True)
class ManifestRow:
    photo_id: int
    url: str | None
    path: str | None
    status: str
    http_status: int | None
    bytes: int | None
    sha256: str | None
    content_type: str | None
    attempts: int
    error: str | None
    seconds: float
    width: int | None = None
    height: int | None = None


class ManifestWriter:
    """Buffers rows and writes a row group every 8,192 rows to a temporary file; ``close`` renames it.

    Leaving the ``with`` block through an exception removes the temporary file: a manifest exists
    under its final name only for a run that settled every photo.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self._stack = ExitStack()
        self._columns: list[list[object]] = [[] for _ in MANIFEST_SCHEMA]
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ManifestWriter:
        tmp = self._stack.enter_context(atomic_path(self.final))
        self._writer = pq.ParquetWriter(tmp, MANIFEST_SCHEMA, compression="zstd")
        # pyarrow imports pandas (~0.3 s) on its first conversion of Python objects; do it now
        # rather than at the first flush, where it would stall every download in flight.
        pa.array([0], pa.int64())
        return self

    def add(self, row: ManifestRow) -> None:
        for column, value in zip(self._columns, (getattr(row, f) for f in ManifestRow.__slots__), strict=True):
            column.append(value)
        if len(self._columns[0]) >= _ROWS_PER_GROUP:
            self.flush()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Append rows that are already a record batch of MANIFEST_SCHEMA (merging part manifests)."""
        self.flush()
        if self._writer is not None:
            self._writer.write_batch(batch)

    def flush(self) -> None:
        if not self._columns[0] or self._writer is None:
            return
        arrays = [pa.array(col, type=f.type) for col, f in zip(self._columns, MANIFEST_SCHEMA, strict=True)]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=MANIFEST_SCHEMA))
        self._columns = [[] for _ in MANIFEST_SCHEMA]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
            if self._writer is not None:
                self._writer.close()
        finally:
            self._stack.__exit__(exc_type, exc, tb)


class PreviousManifest:
    """Sizes and digests of the photos a previous run finished, for validating files on disk.

    Kept as sorted NumPy arrays (about 90 bytes per finished photo), looked up by binary search.
    """

    def __init__(self, ids: np.ndarray, sizes: np.ndarray, digests: pa.Array | None) -> None:
        self._ids = ids
        self._sizes = sizes
        self._digests = digests

    @classmethod
    def empty(cls) -> PreviousManifest:
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), None)

    @classmethod
    def load(cls, path: Path | None) -> PreviousManifest:
        if path is None or not path.exists():
            return cls.empty()
        table = pq.read_table(path, columns=["photo_id", "status", "bytes", "sha256"])
        ok = pc.and_(pc.is_in(table["status"], pa.array([OK, CACHED])), pc.is_valid(table["bytes"]))
        table = table.filter(ok)
        table = table.take(pc.sort_indices(table["photo_id"]))
        ids = table["photo_id"].to_numpy()
        sizes = table["bytes"].to_numpy()
        return cls(ids, sizes, table["sha256"].combine_chunks())

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, photo_id: int) -> tuple[int, str | None] | None:
        """``(bytes, sha256)`` recorded for a finished photo, or None."""
        ids = self._ids
        if not len(ids):
            return None
        i = int(np.searchsorted(ids, photo_id))
        if i < len(ids) and ids[i] == photo_id and self._digests is not None:
            return int(self._sizes[i]), self._digests[i].as_py()
        return None
