"""The download manifest: one row per input photo, written incrementally as Parquet.

pyarrow and NumPy are imported on first use, not with this module: download worker processes
use ``ManifestRow`` only (their parent writes the manifest), and the two libraries would add
about 60 MB to each worker's resident memory.
"""

from __future__ import annotations

import array
import functools
import itertools
import logging
import operator
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from inat_assets.download.config import CACHED, OK
from inat_assets.errors import StorageError
from inat_assets.storage import StorePath, arrow_source, atomic_path

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger("inat_assets.download")


def os_error_cause(exc: OSError) -> str:
    """The cause of a failed file operation in a few words ("No space left on device"), also for
    pyarrow's OSErrors, which carry an errno but bury it in a longer message."""
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


@functools.cache
def manifest_schema() -> pa.Schema:
    """The manifest's columns (``MANIFEST_SCHEMA``)."""
    import pyarrow as pa

    return pa.schema(
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


def __getattr__(name: str) -> object:
    if name == "MANIFEST_SCHEMA":
        return manifest_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_ROWS_PER_GROUP = 8192


class ManifestRow(NamedTuple):
    """One photo's row. A tuple: rows cross from worker processes to the parent as they are, and
    the writer turns a batch of them into columns with one ``zip`` (a frozen dataclass, taken
    apart field by field, cost the parent 12 % of its CPU)."""

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

    The rename happens only when every write, the last flush and the close succeeded. Anything
    else (an exception in the ``with`` block, a full disk at the last flush, a value the schema
    cannot hold) removes the temporary file and leaves the previous manifest as it was. Disk
    errors are raised as ``StorageError`` naming the manifest.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self._stack = ExitStack()
        self._rows: list[tuple[Any, ...]] = []
        self._writer: Any = None  # a pyarrow.parquet.ParquetWriter once entered

    def __enter__(self) -> ManifestWriter:
        import pyarrow.parquet as pq

        try:
            tmp = self._stack.enter_context(atomic_path(self.final))
            self._writer = pq.ParquetWriter(tmp, manifest_schema(), compression="zstd")
        except OSError as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)  # removes the temporary file
            raise self._storage_error(exc) from None
        return self

    def _storage_error(self, exc: OSError) -> StorageError:
        return StorageError(f"cannot write the manifest {self.final}: {os_error_cause(exc)}")

    def add(self, row: ManifestRow) -> None:
        self._rows.append(row)
        if len(self._rows) >= _ROWS_PER_GROUP:
            self.flush()

    def add_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows as plain tuples of ``ManifestRow``'s fields (a worker process's batch)."""
        self._rows.extend(rows)
        if len(self._rows) >= _ROWS_PER_GROUP:
            self.flush()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Append rows that are already a record batch of MANIFEST_SCHEMA (merging part manifests)."""
        self.flush()
        if self._writer is not None:
            try:
                self._writer.write_batch(batch)
            except OSError as exc:
                raise self._storage_error(exc) from None

    def flush(self) -> None:
        if not self._rows or self._writer is None:
            return
        import pyarrow as pa

        schema = manifest_schema()
        columns = zip(*self._rows, strict=True)  # rows of 13 fields -> 13 columns
        arrays = [arrow_array(col, f.type) for col, f in zip(columns, schema, strict=True)]
        self._rows = []
        try:
            self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
        except OSError as exc:
            raise self._storage_error(exc) from None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        failure: BaseException | None = None
        try:
            if exc_type is None:
                self.flush()
        except BaseException as error:
            failure = error
        try:
            if self._writer is not None:
                self._writer.close()
        except BaseException as error:
            failure = failure or error
        self._writer = None
        if failure is None:
            try:
                self._stack.__exit__(exc_type, exc, tb)  # renames into place, or removes after an error
            except OSError as error:
                raise self._storage_error(error) from None
            return
        # The run went well but the manifest could not be completed (a full disk at the last flush,
        # a value out of range): remove the temporary file and keep the previous manifest.
        self._stack.__exit__(type(failure), failure, failure.__traceback__)
        if isinstance(failure, OSError):
            raise self._storage_error(failure) from None
        raise failure


_ARRAY_CODES = {"int64": "q", "int32": "i", "double": "d"}  # array.array type codes of the manifest's numbers


def arrow_array(values: Sequence[Any], type: pa.DataType) -> pa.Array:
    """An Arrow array of the manifest's types (string, int64, int32, double) from a list of Python
    values and Nones, built from buffers.

    ``pa.array`` would do the same, but pyarrow imports pandas on its first conversion of Python
    objects: 54 MB of resident memory and 0.3 s of CPU in the process writing the manifest, which
    in a download over worker processes is the parent (bench/download.py: peak RSS of the process
    tree). Equal to ``pa.array``'s result (test_run_safety). It costs about 1.4 us per row more than
    ``pa.array`` (8,192-row batches: 1.45 against 0.31 ms for a string column): 0.7 s of the parent's
    CPU over a 500,000-photo batch (the default), against the import's 0.3 s and 54 MB once.
    """
    import numpy as np
    import pyarrow as pa

    n = len(values)
    nulls = values.count(None)
    validity = None
    if nulls:
        present = np.fromiter(map(operator.is_not, values, itertools.repeat(None)), dtype=bool, count=n)
        validity = pa.py_buffer(np.packbits(present, bitorder="little"))
    if pa.types.is_string(type):
        encoded = [b"" if value is None else value.encode() for value in values]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
        if offsets[-1] >= 2**31:
            raise OverflowError(f"{offsets[-1]:,} bytes of strings in one manifest batch (at most 2 GiB)")
        buffers = [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
    else:
        numbers = array.array(_ARRAY_CODES[str(type)], [0 if value is None else value for value in values])
        buffers = [validity, pa.py_buffer(numbers)]
    return pa.Array.from_buffers(type, n, buffers, null_count=nulls)


def _int64s(column: pa.ChunkedArray) -> np.ndarray:
    """A NumPy view of an int64 column without nulls (its Arrow buffer, no copy)."""
    import numpy as np

    values = column.combine_chunks()
    assert values.null_count == 0
    data = values.buffers()[1]
    if data is None or not len(values):
        return np.empty(0, dtype=np.int64)
    return np.frombuffer(data, dtype=np.int64, count=len(values), offset=values.offset * 8)


def set_aside_if_unreadable(path: StorePath) -> str | None:
    """Rename a manifest that is not readable Parquet with its columns to
    ``<name>.corrupt-<timestamp>.parquet`` and return a warning that says so; None if it is fine.

    Only the footer is read (cheap for a 150M-row manifest): what a killed copy, a truncated
    file or a foreign file leaves. Without this, every later run would crash on it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        where, filesystem = arrow_source(path)  # a manifest on an object store is read in ranges
        schema = pq.read_schema(where, filesystem=filesystem)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, PermissionError):
            raise StorageError(f"cannot read the manifest {path}: {os_error_cause(exc)}") from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    else:
        missing = {"photo_id", "status", "bytes", "sha256"} - set(schema.names)
        if not missing:
            return None
        reason = f"columns missing: {', '.join(sorted(missing))}"
    aside = path.with_name(f"{path.stem}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}")
    try:
        path.rename(aside)
    except OSError as exc:
        raise StorageError(f"the manifest {path} is unreadable ({reason}) and could not be moved aside: "
                           f"{os_error_cause(exc)}; move or delete it") from None
    return (f"the previous manifest {path} was unreadable ({reason}); moved it to {aside.name} and "
            "started a new one (photos on disk are still checked and kept)")


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
        import numpy as np

        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), None)

    @classmethod
    def load(cls, path: StorePath | None) -> PreviousManifest:
        if path is None or not path.exists():
            return cls.empty()
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        try:
            where, filesystem = arrow_source(path)
            # ParquetFile, not pq.read_table, which imports pandas (for pandas metadata).
            with pq.ParquetFile(where, filesystem=filesystem) as parquet:
                table = parquet.read(columns=["photo_id", "status", "bytes", "sha256"])
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(f"cannot read the previous manifest {path}: {exc}; move it aside to start a "
                               "new one (photos on disk are kept)") from None
        # arrow_array and _int64s, not pa.array and to_numpy: those import pandas too (arrow_array).
        finished = pc.is_in(table["status"], value_set=arrow_array([OK, CACHED], pa.string()))
        # A row without an id (a manifest another tool wrote) names no photo: left out, as _int64s needs.
        table = table.filter(pc.and_(pc.and_(finished, pc.is_valid(table["bytes"])), pc.is_valid(table["photo_id"])))
        table = table.take(pc.sort_indices(table["photo_id"]))
        return cls(_int64s(table["photo_id"]), _int64s(table["bytes"]), table["sha256"].combine_chunks())

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, photo_id: int) -> tuple[int, str | None] | None:
        """``(bytes, sha256)`` recorded for a finished photo, or None."""
        ids = self._ids
        if not len(ids):
            return None
        i = int(ids.searchsorted(photo_id))
        if i < len(ids) and ids[i] == photo_id and self._digests is not None:
            return int(self._sizes[i]), self._digests[i].as_py()
        return None
