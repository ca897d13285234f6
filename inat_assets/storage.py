"""The one place where inat-assets touches files: the seam between the engines and the data directory.

Every output path is built here from the data directory (`DataStore`), and every write that must never
leave a partial file under its final name goes through `atomic_path` / `atomic_write_bytes`.

``INAT_DATA_DIR`` is parsed in one place, `DataStore.from_setting`, which every entry point uses (the
resources, `inat-assets demo`, `ui`, `env`, `batches`, `photos`, `report`, `download-images`). A local
folder gives `pathlib.Path` objects, exactly as before; a URL (``s3://bucket/prefix``, or any protocol
fsspec has a backend for) gives `inat_assets.store.Location` objects with the same small API, so the
engines run unchanged on both:

- writes: `atomic_path` stages the file in local scratch and uploads it once complete (one PUT, or a
  multipart upload that appears only when completed); `atomic_write_bytes` is one PUT;
- reads: DuckDB reads Parquet straight from the store through the fsspec filesystem registered on
  its connection (`DataStore.register`; DuckDB's own httpfs extension is downloaded at run time and
  does not work offline); `reading` gives a local copy to code that needs a real file;
- one writer per output: `acquire_guard` takes flock on a local file, a lease object on a store
  (`inat_assets.store.lease`: conditional PUT, so it holds across machines);
- scratch space (FIFOs, DuckDB spill files, staged uploads, flock files) is always local.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from inat_assets.errors import StorageError
from inat_assets.locks import HeldLock, acquire, is_held
from inat_assets.store import Lease, Location, lease, open_filesystem, split_url

if TYPE_CHECKING:
    import duckdb

# Where a data directory's files live: a local path, or an object on a store.
StorePath = Path | Location

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Served read-only by fsspec: nothing could be written there.
_READ_ONLY_SCHEMES = ("http", "https")


def _create_beside(final: str) -> tuple[int, str]:
    """Create ``.<name>.<random>.part`` beside ``final`` with mode 0666 less the umask.

    tempfile.mkstemp would make it 0600 (and every photo, manifest and table renamed from it owner-
    only, whatever the umask); an os.fchmod afterwards costs one more system call per file. Opening
    with O_EXCL ourselves lets the kernel apply the umask, like any other new file. The random part
    comes from the ``random`` module, which is reseeded in forked children, so worker processes
    do not draw the same names; a name that exists anyway is simply drawn again. Plain strings,
    not Paths: this runs once per downloaded photo, where pathlib's parsing showed in profiles.
    """
    folder, name = os.path.split(final)
    while True:
        tmp = f"{folder}/.{name}.{random.getrandbits(40):010x}.part"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def _temporary_beside(final: str) -> tuple[int, str]:
    try:
        return _create_beside(final)
    except FileNotFoundError:  # first file in a new folder; mkdir only then (it is a syscall per file)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        return _create_beside(final)


@contextmanager
def atomic_path(final: StorePath) -> Iterator[Path]:
    """Yield a temporary local path for ``final``; it becomes ``final`` only if the block succeeds.

    Local: the temporary file is beside ``final`` and renamed onto it. Its name starts with ``.`` and
    ends with ``.part`` so that readers listing the folder (and the rerun logic that skips finished
    files) never mistake it for a finished file. A crash at any moment leaves at most a ``.part`` file,
    never a partial file under the final name.

    On a store: the file is staged in local scratch and uploaded once the block succeeded. Staging
    and one upload instead of DuckDB writing through the registered filesystem: that writer publishes
    what it was given when closed, also after an error (bench/object_store.py: a COPY that failed part-way
    left a truncated 207 MB object in place of the previous good one), and staging cost the same client
    CPU (1.01x for an 88 MB Parquet file, medians of 3).
    """
    if isinstance(final, Location):
        final.staging.mkdir(parents=True, exist_ok=True)
        fd, staged = _create_beside(str(final.staging / final.name))
        os.close(fd)
        try:
            yield Path(staged)
            final.upload(Path(staged))
        finally:
            Path(staged).unlink(missing_ok=True)
        return
    fd, tmp = _temporary_beside(os.fspath(final))
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(final: str | os.PathLike[str] | Location, data: bytes | memoryview, *, fsync: bool = False) -> None:
    """Write ``data`` to ``final`` atomically (temporary file, then rename), through one descriptor
    and ``os.write`` (a file object would add an fstat and a buffer copy per file); on a store, one PUT."""
    if isinstance(final, Location):
        final.write_bytes(bytes(data))
        return
    final = os.fspath(final)
    fd, tmp = _temporary_beside(final)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextmanager
def reading(source: StorePath) -> Iterator[Path]:
    """A local file with the content of ``source``: itself when local, else a copy in scratch (deleted after).

    For code that needs a real file (zipfile over a whole archive, a library that opens paths);
    DuckDB needs none of this: it reads the store through `DataStore.register`.
    """
    if not isinstance(source, Location):
        yield source
        return
    source.staging.mkdir(parents=True, exist_ok=True)
    fd, staged = _create_beside(str(source.staging / source.name))
    os.close(fd)
    tmp = Path(staged)
    try:
        source.fs.get_file(source.path, staged)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Entry:
    """One item of a folder or prefix listing."""

    name: str
    path: StorePath
    is_dir: bool
    size: int


def list_dir(folder: StorePath) -> list[Entry]:
    """What is directly in ``folder`` (nothing when it does not exist), sorted by name: one directory scan,
    or one listing of that prefix on a store (never of the whole bucket)."""
    if isinstance(folder, Location):
        try:
            infos = folder.fs.ls(folder.path, detail=True)
        except FileNotFoundError:
            return []
        entries = []
        for info in infos:
            key = str(info["name"]).rstrip("/")
            if key == folder.path:
                continue
            child = Location(folder.fs, key, folder.staging)
            entries.append(Entry(child.name, child, info.get("type") == "directory", int(info.get("size") or 0)))
        return sorted(entries, key=lambda e: e.name)
    try:
        with os.scandir(folder) as scan:
            items = [
                Entry(e.name, Path(e.path), e.is_dir(), e.stat().st_size if e.is_file() else 0) for e in scan
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(items, key=lambda e: e.name)


def acquire_guard(path: StorePath, *, purpose: str, wait_seconds: float = 0.0) -> HeldLock | Lease:
    """One writer at a time for ``path``: flock on a local file, a lease object on a store.

    Both raise `inat_assets.locks.LockedError` naming the holder, and both are released by
    ``release()`` (a dead holder's flock goes with its process, its lease expires: see store.lease).
    """
    if isinstance(path, Location):
        return lease(path, purpose=purpose, wait_seconds=wait_seconds)
    return acquire(path, purpose=purpose, wait_seconds=wait_seconds)


@contextmanager
def guarded(path: StorePath, *, purpose: str, wait_seconds: float = 0.0) -> Iterator[HeldLock | Lease]:
    held = acquire_guard(path, purpose=purpose, wait_seconds=wait_seconds)
    try:
        yield held
    finally:
        held.release()


def store_path(text: str, scratch: Path | None = None, *, what: str = "path") -> StorePath:
    """The one parse of a local path or store URL (``s3://bucket/key``; ``file://`` is local).

    ``what`` names the setting or option in errors (``INAT_DATA_DIR``, ``--output``). A URL becomes a
    `Location` whose uploads are staged in ``scratch`` (default: a folder per store under the system's
    temporary folder).
    """
    setting = str(text).strip()
    match = _URL.match(setting)
    scheme = match.group(1).lower() if match else ""
    if not scheme or scheme == "file":
        local = setting[len("file://"):] if scheme else setting
        return Path(local or ".").expanduser().resolve()
    if scheme in _READ_ONLY_SCHEMES:
        raise StorageError(
            f"{what}={setting!r}: {scheme}:// is read-only, and outputs are written there. Use a local folder "
            "or an object store such as s3://bucket/prefix."
        )
    _, path = split_url(setting)
    if not path:
        raise StorageError(f"{what}={setting!r} names no bucket: use {scheme}://bucket or {scheme}://bucket/prefix.")
    return Location(open_filesystem(setting), path, (scratch or _default_scratch(setting)) / "staging")


def arrow_source(path: StorePath) -> tuple[str, object]:
    """(path, filesystem) for pyarrow's readers (``pq.read_table(p, filesystem=fs)``): fsspec's on a store."""
    if isinstance(path, Location):
        return path.path, path.fs
    return str(path), None


def register(con: duckdb.DuckDBPyConnection, *paths: StorePath) -> duckdb.DuckDBPyConnection:
    """Let ``con`` read (and write) the stores of ``paths`` through fsspec; local paths need nothing.

    Reading through the registered filesystem instead of downloading first: DuckDB then fetches
    only the byte ranges it needs (the footer, the row groups and columns of one batch's id range):
    0.19x the client CPU and 0.12x the wall time of a download + local read for one batch of an
    88 MB fetch list (bench/object_store.py, medians of 3); only files of a few MB read faster whole.
    """
    for path in paths:
        if isinstance(path, Location) and path.protocol not in con.list_filesystems():
            con.register_filesystem(path.fs)
    return con


def _default_scratch(url: str) -> Path:
    """Local scratch of a store: under the system's temporary folder, one folder per store URL."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", url.split("://", 1)[1]).strip("-")[:60]
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / "inat-assets" / f"{readable}-{digest}"


@dataclass(frozen=True)
class DataStore:
    """The data directory (``INAT_DATA_DIR``) and the layout of everything written under it.

    ``root`` is a local folder (`Path`) or a prefix on an object store (`Location`); every layout
    method returns the same kind. ``scratch_root`` is local working space (default: ``<root>/tmp``
    for a local data dir, a folder under the system's temporary folder for a store).
    """

    root: StorePath
    scratch_root: Path | None = None

    @classmethod
    def from_setting(cls, data_dir: str, scratch_dir: str = "") -> DataStore:
        """The one parse of INAT_DATA_DIR: a local folder, ``file://...``, or an object-store URL."""
        scratch = Path(scratch_dir).expanduser().resolve() if scratch_dir else None
        root = store_path(data_dir, scratch, what="INAT_DATA_DIR")
        if isinstance(root, Location):
            return cls(root, scratch or root.staging.parent)
        return cls(root, scratch)

    @property
    def is_remote(self) -> bool:
        return isinstance(self.root, Location)

    @property
    def url(self) -> str:
        """The data directory as the user would write it: a path or ``s3://bucket/prefix``."""
        return str(self.root)

    def check(self) -> None:
        """Fail early, with what to do, when a store's bucket cannot be reached (a local folder is created)."""
        if not isinstance(self.root, Location):
            return
        bucket = self.root.path.split("/", 1)[0]
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        try:
            self.root.fs.ls(bucket, detail=False)
        except Exception as exc:  # botocore/fsspec raise many types: each means "cannot use this store"
            where = f" at AWS_ENDPOINT_URL={endpoint}" if endpoint else ""
            raise StorageError(
                f"INAT_DATA_DIR={self.url}: the bucket {bucket!r} cannot be used{where} ({type(exc).__name__}: {exc}). "
                "Create the bucket, or check AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE) and AWS_DEFAULT_REGION."
            ) from None

    def register(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Let ``con`` read this store's URLs (a no-op for a local folder)."""
        return register(con, self.root)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A plain DuckDB connection that can read this store (for commands outside Dagster)."""
        import duckdb

        return self.register(duckdb.connect())

    def path(self, *parts: str) -> StorePath:
        return self.root.joinpath(*parts)

    def locate(self, recorded: str) -> StorePath:
        """A path or URL recorded earlier (an asset's ``path`` metadata) as a Path or a Location."""
        return store_path(recorded, self.scratch_root)

    def ensure_dir(self, *parts: str) -> StorePath:
        folder = self.path(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # The layout, in one place -------------------------------------------------------------
    def archive_dir(self) -> StorePath:
        return self.path("archive")

    def table(self, name: str) -> StorePath:
        """``observations`` -> ``<root>/observations.parquet``."""
        return self.path(f"{name}.parquet")

    def rejects(self, table: str) -> StorePath:
        return self.path("rejects", f"{table}.parquet")

    def batch_state(self) -> StorePath:
        """The image batch span, one for the whole data directory (so photo folders are shared)."""
        return self.path("batches.json")

    def photos_root(self) -> StorePath:
        return self.path("photos")

    def photos_dir(self, size: str, batch: str) -> StorePath:
        """``photos/<size>/<batch>/``: each photo stored once per size, whichever datasets select it."""
        return self.path("photos", size, batch)

    def photos_lock(self, size: str, batch: str) -> StorePath:
        """Held while a run writes to (or deletes from) ``photos/<size>/<batch>/`` (see `acquire_guard`).

        A local file in scratch for a local data dir; a lease object on the store itself otherwise,
        since runs on other machines write to the same prefix.
        """
        if isinstance(self.root, Location):
            return self.path("locks", f"photos-{size}-{batch}.lease")
        return self.scratch_dir("locks") / f"photos-{size}-{batch}.lock"

    def dataset_dir(self, dataset: str) -> StorePath:
        return self.path("datasets", dataset)

    def fetch_list(self, dataset: str) -> StorePath:
        return self.path("datasets", dataset, "fetch.parquet")

    def manifests_dir(self, dataset: str) -> StorePath:
        return self.path("datasets", dataset, "manifests")

    def manifest(self, dataset: str, batch: str) -> StorePath:
        return self.path("datasets", dataset, "manifests", f"{batch}.parquet")

    def outdated_batches(self, dataset: str) -> StorePath:
        """Batch keys whose photos changed at the dataset's last fetch list (its batch-fill sensor redoes them)."""
        return self.path("datasets", dataset, "outdated_batches.json")

    def training_dir(self, dataset: str) -> StorePath:
        """``datasets/<name>/training/``: the training dataset (index, exports, card, attribution, plots)."""
        return self.path("datasets", dataset, "training")

    def scratch_dir(self, *parts: str) -> Path:
        """Local working space (FIFOs, DuckDB spill files, extracted members, staged uploads); safe to
        delete when idle. Always on this machine, also when the data directory is on a store."""
        base = self.scratch_root if self.scratch_root is not None else self.root / "tmp"  # type: ignore[operator]
        folder = Path(base).joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder


# Scratch folders of one run ------------------------------------------------------------------
_SCRATCH_LOCK = ".lock"
# A folder without a lock file is only removed when older than this: a run creates its lock file a
# moment before its folder's first file, and a dead run's folder always has one.
_UNLOCKED_GRACE_SECONDS = 600.0


@dataclass(frozen=True)
class RemovedScratch:
    path: Path
    bytes: int


@contextmanager
def run_scratch(parent: Path, purpose: str) -> Iterator[Path]:
    """A fresh folder under ``parent`` for this run's working files, locked while the run lives.

    The lock (``<folder>/.lock``, see `inat_assets.locks`) is what `remove_dead_scratch` looks at:
    the kernel drops it when the process dies, however it dies, so a later run can tell this
    folder from a dead run's. The folder is deleted when the block ends.
    """
    folder = parent / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lock = acquire(folder / _SCRATCH_LOCK, purpose=purpose)  # creates the folder
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.release()


def remove_dead_scratch(parent: Path) -> list[RemovedScratch]:
    """Delete every run folder under ``parent`` whose lock no live process holds; say what went."""
    removed: list[RemovedScratch] = []
    if not parent.is_dir():
        return removed
    for folder in sorted(parent.iterdir()):
        if not folder.is_dir() or folder.is_symlink():
            continue
        lock = folder / _SCRATCH_LOCK
        if lock.exists():
            if is_held(lock):
                continue
        elif time.time() - folder.stat().st_mtime < _UNLOCKED_GRACE_SECONDS:
            continue
        size = _tree_bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(RemovedScratch(folder, size))
    return removed


def remove_stale_parts(final: StorePath) -> list[RemovedScratch]:
    """Delete the temporary files `atomic_path` left beside ``final`` (a killed run's ``.part``).

    Only call this while holding the lock that makes you the one writer of ``final``. A store has
    none: nothing is written there until the upload of a finished file.
    """
    if isinstance(final, Location):
        return []
    removed = []
    for part in final.parent.glob(f".{final.name}.*.part"):
        size = part.stat().st_size if part.is_file() else 0
        part.unlink(missing_ok=True)
        removed.append(RemovedScratch(part, size))
    return removed


def _tree_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            pass
    return total
