"""The one place where inat-assets touches files.

Every output path is built here from the data directory, and every write that must never leave a
partial file under its final name goes through `atomic_path` / `atomic_write_bytes`. Today the
data directory is a local folder; object storage (``s3://...``) will be added behind this same
interface, which is why callers ask for paths and URIs here instead of joining strings themselves.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from inat_assets.errors import StorageError
from inat_assets.locks import acquire, is_held

_UNSUPPORTED_SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "http://", "https://")




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
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary name starts with ``.`` and ends with ``.part`` so that readers listing the folder
    (and the rerun logic that skips finished files) never mistake it for a finished file. A crash
    at any moment leaves at most a ``.part`` file, never a partial file under the final name.
    """
    fd, tmp = _temporary_beside(os.fspath(final))
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes | memoryview, *, fsync: bool = False) -> None:
    """Write ``data`` to ``final`` atomically (temporary file, then rename), through one descriptor
    and ``os.write`` (a file object would add an fstat and a buffer copy per file)."""
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


@dataclass(frozen=True)
class DataStore:
    """The data directory (``INAT_DATA_DIR``) and the layout of everything written under it."""

    root: Path

    @classmethod
    def from_setting(cls, data_dir: str) -> DataStore:
        if data_dir.startswith(_UNSUPPORTED_SCHEMES):
            raise StorageError(
                f"INAT_DATA_DIR={data_dir!r}: only local folders are supported in this version. "
                "Point INAT_DATA_DIR at a local or mounted folder."
            )
        return cls(Path(data_dir).expanduser().resolve())

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def ensure_dir(self, *parts: str) -> Path:
        folder = self.path(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # The layout, in one place -------------------------------------------------------------
    def archive_dir(self) -> Path:
        return self.path("archive")

    def table(self, name: str) -> Path:
        """``observations`` -> ``<root>/observations.parquet``."""
        return self.path(f"{name}.parquet")

    def rejects(self, table: str) -> Path:
        return self.path("rejects", f"{table}.parquet")

    def batch_state(self) -> Path:
        """The image batch span, one for the whole data directory (so photo folders are shared)."""
        return self.path("batches.json")

    def photos_root(self) -> Path:
        return self.path("photos")

    def photos_dir(self, size: str, batch: str) -> Path:
        """``photos/<size>/<batch>/``: each photo stored once per size, whichever datasets select it."""
        return self.path("photos", size, batch)

    def photos_lock(self, size: str, batch: str) -> Path:
        """Held while a run writes to (or deletes from) ``photos/<size>/<batch>/``."""
        return self.scratch_dir("locks") / f"photos-{size}-{batch}.lock"

    def dataset_dir(self, dataset: str) -> Path:
        return self.path("datasets", dataset)

    def fetch_list(self, dataset: str) -> Path:
        return self.path("datasets", dataset, "fetch.parquet")

    def manifests_dir(self, dataset: str) -> Path:
        return self.path("datasets", dataset, "manifests")

    def manifest(self, dataset: str, batch: str) -> Path:
        return self.path("datasets", dataset, "manifests", f"{batch}.parquet")

    def outdated_batches(self, dataset: str) -> Path:
        """Batch keys whose photos changed at the dataset's last fetch list (its batch-fill sensor redoes them)."""
        return self.path("datasets", dataset, "outdated_batches.json")

    def training_dir(self, dataset: str) -> Path:
        """``datasets/<name>/training/``: the training dataset (index, exports, card, attribution, plots)."""
        return self.path("datasets", dataset, "training")

    def scratch_dir(self, *parts: str) -> Path:
        """Working space (FIFOs, DuckDB spill files, extracted members); safe to delete when idle."""
        return self.ensure_dir("tmp", *parts)


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


def remove_stale_parts(final: Path) -> list[RemovedScratch]:
    """Delete the temporary files `atomic_path` left beside ``final`` (a killed run's ``.part``).

    Only call this while holding the lock that makes you the one writer of ``final``.
    """
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
