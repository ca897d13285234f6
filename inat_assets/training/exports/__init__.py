"""Exports of dataset.parquet that training code loads directly; each reads the index in batches.

Each export is written into an `ExportFolder`: on a local data directory a temporary folder beside the
export that replaces it as a whole at the end (readers see the old export or the new one); on an object
store (INAT_DATA_DIR=s3://...) the objects under the export's prefix, each uploaded complete (staged
in local scratch, or copied server-side), the previous build's objects that the new one does not
rewrite deleted at the end. A store has no rename, so there a reader listing the prefix during a
rebuild can see some objects of each build (each one whole); ``summary.json``, written last, marks a
finished build.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from glob import has_magic
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from inat_assets.dwca.convert import sql_string
from inat_assets.errors import StorageError, TrainingDatasetError
from inat_assets.storage import StorePath, list_dir, store_path
from inat_assets.store import Location, open_filesystem, split_url
from inat_assets.store.location import _is_s3 as is_s3  # the store seam's test for S3 (private there)
from inat_assets.training.options import ResizeOptions

READ_BATCH_ROWS = 2048


def _row_groups_of(reader: pq.ParquetFile, split: str) -> list[int]:
    """Row groups that may hold ``split``: the index is sorted by split, so most hold one split only."""
    column = reader.schema_arrow.get_field_index("split")
    groups = []
    for i in range(reader.metadata.num_row_groups):
        stats = reader.metadata.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min <= split <= stats.max:
            groups.append(i)
    return groups


def iter_rows(index: Path, split: str | None = None, *, mini: bool = False) -> Iterator[dict]:
    """Index rows of one split (all when None; ``mini`` = only ``train_mini``), in file order.

    Reads one record batch at a time, so memory stays at a few batches whatever the index size,
    and skips row groups whose statistics show they hold other splits only.
    """
    reader = pq.ParquetFile(index)
    groups = _row_groups_of(reader, split) if split is not None else None
    if groups == []:
        return
    for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=groups):
        if split is not None:
            batch = batch.filter(pc.equal(batch.column("split"), split))
        if mini:
            batch = batch.filter(batch.column("mini"))
        yield from batch.to_pylist()


def split_names(has_mini: bool) -> tuple[str, ...]:
    return ("train", "val", "test", "train_mini") if has_mini else ("train", "val", "test")


def rows_of(index: Path, split: str) -> Iterator[dict]:
    """Rows of ``split``, where ``train_mini`` is the mini subset of train."""
    if split == "train_mini":
        return iter_rows(index, "train", mini=True)
    return iter_rows(index, split)


def extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return "jpg" if ext in ("jpeg", "") else ext


def missing_photo(row: dict, exc: OSError) -> TrainingDatasetError:
    return TrainingDatasetError(
        f"photo {row['photo_id']} (batch {row['batch']}) is listed as downloaded but {row['path']} cannot be read "
        f"({exc.strerror or exc}); re-materialize batch {row['batch']} so its manifest matches the files on disk"
    )


def read_photo(row: dict) -> bytes:
    try:
        with open(row["path"], "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise missing_photo(row, exc) from exc


# Photos on a store are read this many at a time, concurrently (one GET each; fsspec runs a window's
# requests at once), while the previous window is being exported. A window is also closed at
# PREFETCH_BYTES of photos (by the manifests' sizes), so memory stays at two windows: 2 x 32 MB.
PREFETCH_PHOTOS = 64
PREFETCH_BYTES = 32 << 20


def store_object(path: str) -> tuple[AbstractFileSystem, str] | None:
    """(filesystem, key) of a manifest path that is a store URL (``s3://bucket/key``); None for a local path."""
    if "://" not in path:
        return None
    protocol, key = split_url(path)
    if protocol == "file":
        return None
    return open_filesystem(path), key  # fsspec hands back its cached instance: no new client per photo


def _windows(rows: Iterable[dict]) -> Iterator[list[dict]]:
    window: list[dict] = []
    size = 0
    for row in rows:
        window.append(row)
        size += row.get("bytes") or 0
        if len(window) >= PREFETCH_PHOTOS or size >= PREFETCH_BYTES:
            yield window
            window, size = [], 0
    if window:
        yield window


def _fetch(window: list[dict]) -> list[bytes]:
    """The bytes of a window's photos, in order; store objects fetched concurrently (one ranged read each)."""
    out: list[bytes | None] = [None] * len(window)
    remote: dict[int, list[tuple[int, str]]] = {}
    filesystems: dict[int, AbstractFileSystem] = {}
    for i, row in enumerate(window):
        where = store_object(row["path"])
        if where is None:
            out[i] = read_photo(row)
        else:
            filesystems[id(where[0])] = where[0]
            remote.setdefault(id(where[0]), []).append((i, where[1]))
    for fs_id, items in remote.items():
        # cat_ranges, not cat: cat expands glob characters in keys. From byte 0 to the end rather than
        # start=None: s3fs sends a HEAD for the size before each whole-object GET (2 requests a photo).
        results = filesystems[fs_id].cat_ranges([k for _, k in items], 0, None, on_error="return")
        for (i, _), result in zip(items, results, strict=True):
            if isinstance(result, FileNotFoundError):
                raise missing_photo(window[i], result) from result
            if isinstance(result, BaseException):
                raise StorageError(
                    f"cannot read photo {window[i]['photo_id']} from the store at {window[i]['path']} "
                    f"({type(result).__name__}: {result}); check the store (AWS_ENDPOINT_URL, credentials) and rerun"
                ) from result
            out[i] = result
    return out  # type: ignore[return-value]


def read_photos(rows: Iterable[dict]) -> Iterator[tuple[dict, bytes]]:
    """Each row with its photo's bytes, in order. Local files are read one by one as they come; on a
    store, windows of photos are fetched concurrently, the next one while the caller works on this one."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return
    rows = itertools.chain([first], rows)
    if store_object(first["path"]) is None:
        for row in rows:
            yield row, read_photo(row)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="photo-prefetch") as pool:
        ahead: tuple[list[dict], Future[list[bytes]]] | None = None
        for window in _windows(rows):
            fetching = (window, pool.submit(_fetch, window))
            if ahead is not None:
                yield from zip(ahead[0], ahead[1].result(), strict=True)
            ahead = fetching
        if ahead is not None:
            yield from zip(ahead[0], ahead[1].result(), strict=True)


def check_photos_exist(con: duckdb.DuckDBPyConnection, index: Path) -> None:
    """Raise `missing_photo` for the first photo of ``index`` that is not on its store.

    One listing per photo folder (``photos/<size>/<batch>/``, up to 1,000 names a request), not a
    request per photo: the index's store paths are streamed in path order, so one folder's names are
    in memory at a time. Local paths are skipped (their exports fail on the missing file, inside a
    folder that is only swapped in on success).
    """
    rows = con.execute(
        f"""SELECT photo_id, batch, path FROM read_parquet({sql_string(index)})
        WHERE contains(path, '://') ORDER BY path"""
    )
    folder, names = "", set()
    while chunk := rows.fetchmany(READ_BATCH_ROWS):
        for photo_id, batch, path in chunk:
            parent, _, name = path.rpartition("/")
            if parent != folder:
                folder, names = parent, {e.name for e in list_dir(store_path(parent))}
            if name not in names:
                row = {"photo_id": photo_id, "batch": batch, "path": path}
                raise missing_photo(row, FileNotFoundError(errno.ENOENT, "no such object on the store"))


def exported_bytes(row: dict, data: bytes, resize: ResizeOptions | None) -> tuple[bytes, str]:
    """The bytes to export for one photo (``data``, its file's content) and their extension: the
    original, or a resized JPEG copy.

    Photos already within ``longest_side`` are exported unchanged (re-encoding would only lose quality).
    """
    path = row["path"]
    if resize is None:
        return data, extension(path)
    from PIL import Image  # only the resize needs Pillow; imported here to keep the index path light

    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) <= resize.longest_side:
            return data, extension(path)
        image.thumbnail((resize.longest_side, resize.longest_side))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=resize.quality)
    return out.getvalue(), "jpg"


class ExportFolder:
    """The files of one export, written under a final folder (or store prefix) by relative name.

    ``file(rel)`` gives a local path to write a whole file at; ``close_file(rel)`` says it is complete.
    ``write(rel, data)`` writes bytes; ``place(rel, row, link)`` puts the row's photo itself there.
    The local folder writes into a temporary folder (``tmp``) that replaces the export on success.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def mkdir(self, rel: str) -> None:
        (self.tmp / rel).mkdir(exist_ok=True)

    def file(self, rel: str) -> Path:
        return self.tmp / rel

    def close_file(self, rel: str) -> None:
        """Nothing to do: the whole folder replaces the export at the end."""

    def write(self, rel: str, data: bytes) -> None:
        (self.tmp / rel).write_bytes(data)

    def place(self, rel: str, row: dict, link: str) -> None:
        target, source = self.tmp / rel, row["path"]
        try:
            if link == "hardlink":
                try:
                    os.link(source, target)
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
            shutil.copyfile(source, target)
        except FileNotFoundError as exc:
            raise missing_photo(row, exc) from exc

    def finish(self) -> None:
        """Called once every file is written (and before the folder replaces the export)."""

    def abandon(self) -> None:
        """Called when the export failed."""


# Server-side copies and small PUTs in flight at once on a store: each is one round trip, so a
# window of them costs about one latency instead of 64 (the s3 client pool has 64 connections).
STORE_WINDOW = 64


class StoreExportFolder(ExportFolder):
    """An export on an object store: every object written whole, then the previous build's leftovers deleted.

    Whole files (shards, metadata.jsonl) are written in local scratch and uploaded when closed, in a
    background thread, so the next shard is built during the upload (one upload in flight, so local
    disk holds at most two shards). Photos are copied server-side (no bytes through this machine, the
    store's equivalent of the local hard link); resized copies are PUT from memory, a window at a time.
    Every key written is remembered in a local file, not in memory (an imagefolder has one per
    photo); at the end the keys under the prefix that this build did not write are deleted.
    """

    def __init__(self, final: Location, work: Path) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix=f"{final.name}-", dir=work)))
        self.final = final
        self._uploads = ThreadPoolExecutor(1, thread_name_prefix="export-upload")
        self._upload: Future[None] | None = None
        self._copies: list[tuple[str, str, dict]] = []  # (source key, target key, row)
        self._puts: dict[str, bytes] = {}
        self._put_bytes = 0
        self._written = open(self.tmp / WRITTEN_KEYS, "w", encoding="utf-8")  # noqa: SIM115 (closed in finish/abandon)

    def _key(self, rel: str) -> str:
        self._written.write(rel + "\n")
        return f"{self.final.path}/{rel}"

    def mkdir(self, rel: str) -> None:
        """Nothing to do: a prefix exists once an object is written under it."""

    def file(self, rel: str) -> Path:
        return self.tmp / rel.replace("/", "__")

    def close_file(self, rel: str) -> None:
        self._wait_upload()
        local, key = self.file(rel), self._key(rel)

        def upload() -> None:
            try:
                self.final.fs.put_file(str(local), key)  # multipart when large: visible only once complete
            finally:
                local.unlink(missing_ok=True)

        self._upload = self._uploads.submit(upload)

    def _wait_upload(self) -> None:
        if self._upload is not None:
            upload, self._upload = self._upload, None
            upload.result()

    def write(self, rel: str, data: bytes) -> None:
        self._puts[self._key(rel)] = data
        self._put_bytes += len(data)
        if len(self._puts) >= STORE_WINDOW or self._put_bytes >= PREFETCH_BYTES:
            self._flush()

    def place(self, rel: str, row: dict, link: str) -> None:
        where = store_object(row["path"])
        if where is None:  # a local photo bound for the store: its bytes
            self.write(rel, read_photo(row))
            return
        self._copies.append((where[1], self._key(rel), row))
        if len(self._copies) >= STORE_WINDOW:
            self._flush()

    def _flush(self) -> None:
        fs = self.final.fs
        if self._copies:
            try:
                server_side_copy(fs, [(c[0], c[1]) for c in self._copies])
            except FileNotFoundError as exc:
                gone = next((row for source, _, row in self._copies if not fs.exists(source)), self._copies[0][2])
                raise missing_photo(gone, exc) from exc
            self._copies = []
        if self._puts:
            fs.pipe(self._puts)
            self._puts, self._put_bytes = {}, 0

    def finish(self) -> None:
        try:
            self._flush()
            self._wait_upload()
            self._written.close()
            delete_stale(self.final, self.tmp / WRITTEN_KEYS)
        finally:
            self.abandon()

    def abandon(self) -> None:
        self._uploads.shutdown(wait=True, cancel_futures=True)
        self._written.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


WRITTEN_KEYS = ".written-keys"


def server_side_copy(fs: AbstractFileSystem, pairs: list[tuple[str, str]]) -> None:
    """Copy objects within the store, all of ``pairs`` (source key, target key) at once.

    On S3 one CopyObject each, sent from a thread per copy: s3fs's own copy first sends a HEAD for
    the source's size (2 requests a photo; the build listed every photo already). Other stores:
    fsspec's copy (two lists: no glob expansion of the keys).
    """
    if not is_s3(fs):
        fs.copy([a for a, _ in pairs], [b for _, b in pairs])
        return

    def copy(pair: tuple[str, str]) -> None:
        (source_bucket, source_key), (bucket, key) = (p.split("/", 1) for p in pair)
        fs.call_s3("copy_object", Bucket=bucket, Key=key, CopySource={"Bucket": source_bucket, "Key": source_key})

    with ThreadPoolExecutor(min(len(pairs), STORE_WINDOW), thread_name_prefix="store-copy") as pool:
        for _ in pool.map(copy, pairs):
            pass


def delete_stale(final: Location, written: Path) -> int:
    """Delete the objects under ``final`` whose relative key is not a line of ``written``; how many went.

    Lists one folder level at a time (`list_dir`: one listing per prefix, never the whole bucket) and
    looks each folder's objects up among the written keys, sorted once by DuckDB (which spills to
    disk), so memory holds one folder's listing whatever the export's size.
    """
    import duckdb

    stale: list[str] = []
    removed = 0
    with duckdb.connect() as con:
        con.execute(
            "CREATE TABLE written AS SELECT rel FROM read_csv(?, header = false, columns = {'rel': 'VARCHAR'}, "
            "delim = '\t', quote = '', escape = '', auto_detect = false) ORDER BY rel",
            [str(written)],
        )

        def written_in(prefix: str) -> set[str]:
            # Keys of the folder itself (no further '/'), found by range on the sorted column.
            bounds = "rel >= $1 AND rel < $2 AND" if prefix else ""
            query = f"SELECT rel FROM written WHERE {bounds} NOT contains(substr(rel, length($1) + 1), '/')"
            return {r[0] for r in con.execute(query, [prefix, prefix[:-1] + "0"] if prefix else [prefix]).fetchall()}

        def walk(folder: StorePath, prefix: str) -> None:
            nonlocal removed
            entries = list_dir(folder)
            files = [prefix + e.name for e in entries if not e.is_dir]
            if files:
                kept = written_in(prefix)
                stale.extend(f"{final.path}/{rel}" for rel in files if rel not in kept)
            if len(stale) >= 1000:
                removed += _delete(final.fs, stale)
                stale.clear()
            for entry in entries:
                if entry.is_dir:
                    walk(entry.path, f"{prefix}{entry.name}/")

        walk(final, "")
        removed += _delete(final.fs, stale)
    return removed


def _delete(fs: AbstractFileSystem, keys: list[str]) -> int:
    """Delete ``keys``: in bulk (one request per 1,000 on S3), except keys with glob characters
    (``[``, ``*``, ``?`` in a label), which fsspec's bulk delete would expand as patterns."""
    plain = [k for k in keys if not has_magic(k)]
    if plain:
        fs.rm(plain)
    for key in keys:
        if has_magic(key):
            fs.rm_file(key)
    return len(keys)


@contextmanager
def export_folder(final: StorePath, work: Path) -> Iterator[ExportFolder]:
    """The `ExportFolder` for ``final``: a temporary local folder that replaces it, or its store prefix."""
    if isinstance(final, Location):
        folder = StoreExportFolder(final, work)
        try:
            yield folder
        except BaseException:
            folder.abandon()
            raise
        folder.finish()
        return
    with replaced_folder(final) as tmp:
        yield ExportFolder(tmp)


@contextmanager
def replaced_folder(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final`` as a whole.

    Readers see either the old export or the new one, never a mix; a failed build leaves the old
    one in place and removes the temporary folder.
    """
    tmp = final.with_name(f".{final.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
