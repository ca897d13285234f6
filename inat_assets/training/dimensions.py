"""Image width and height from the file header, for manifests written before they carried them.

Pillow's ``Image.open`` reads only the header (no pixel decoding); a file that cannot be read or
parsed gets NULL dimensions rather than failing the build (the exports read the bytes and fail
there with a message if the file is gone). Photos on an object store: a ranged read of the first
bytes of each, a batch at a time, concurrently.
"""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from inat_assets.dwca.convert import sql_string
from inat_assets.training.exports import STORE_WINDOW, store_object

_BATCH_ROWS = 8192
_SCHEMA = pa.schema([("photo_id", pa.int64()), ("width", pa.int32()), ("height", pa.int32())])


# A JPEG's size sits in its SOF marker, after the EXIF block (up to 64 KiB): one ranged read of this
# many bytes finds it for nearly every photo on a store; the rest are read whole.
HEADER_BYTES = 96 * 1024


def header_dimensions(path: str | io.BytesIO) -> tuple[int | None, int | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None, None


def _dimensions_of(paths: list[str]) -> list[tuple[int | None, int | None]]:
    """Width and height of each file: local files opened, store objects' headers read concurrently."""
    dims: list[tuple[int | None, int | None]] = []
    remote: dict[int, tuple[AbstractFileSystem, list[tuple[int, str]]]] = {}
    for i, path in enumerate(paths):
        where = store_object(path)
        dims.append(header_dimensions(path) if where is None else (None, None))
        if where is not None:
            remote.setdefault(id(where[0]), (where[0], []))[1].append((i, where[1]))
    for fs, items in remote.values():  # one filesystem per data directory in practice
        for start in range(0, len(items), STORE_WINDOW):  # a window of heads in memory, not the batch's
            window = items[start : start + STORE_WINDOW]
            heads = fs.cat_ranges([k for _, k in window], 0, HEADER_BYTES, on_error="return")
            _fill(dims, fs, window, heads)
    return dims


def _fill(dims: list, fs: AbstractFileSystem, window: list[tuple[int, str]], heads: list) -> None:
    for (i, key), head in zip(window, heads, strict=True):
        if isinstance(head, bytes):
            dims[i] = header_dimensions(io.BytesIO(head))
            if dims[i] == (None, None) and len(head) >= HEADER_BYTES:  # the size lies further in
                dims[i] = header_dimensions(io.BytesIO(fs.cat_file(key)))


def fill_missing_dimensions(
    con: duckdb.DuckDBPyConnection, usable_table: str, photo_ids_sql: str, scratch: Path
) -> int:
    """Set width/height in ``usable_table`` for the photos of ``photo_ids_sql`` where they are NULL.

    Streams the (photo_id, path) pairs in record batches and appends each batch's dimensions to the
    Parquet file ``scratch`` (the connection is busy streaming, so it cannot take inserts), then
    updates the table from it. Memory stays at one batch. Returns the number of files read.
    """
    relation = con.sql(
        f"SELECT photo_id, path FROM {usable_table} WHERE width IS NULL AND photo_id IN ({photo_ids_sql}) ORDER BY path"
    )
    # duckdb 2.x names it to_arrow_reader, 1.x fetch_arrow_reader (both are supported, see pyproject).
    to_reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    reader = to_reader(_BATCH_ROWS)
    read = 0
    try:
        with pq.ParquetWriter(scratch, _SCHEMA) as writer:
            for batch in reader:
                dims = _dimensions_of(batch.column("path").to_pylist())
                writer.write_batch(
                    pa.record_batch(
                        [batch.column("photo_id"), pa.array([d[0] for d in dims], pa.int32()),
                         pa.array([d[1] for d in dims], pa.int32())],
                        schema=_SCHEMA,
                    )
                )  # fmt: skip
                read += batch.num_rows
        if read:
            con.execute(
                f"""UPDATE {usable_table} AS u SET width = d.width, height = d.height
                FROM read_parquet({sql_string(scratch)}) AS d WHERE u.photo_id = d.photo_id"""
            )
    finally:
        scratch.unlink(missing_ok=True)
    return read
