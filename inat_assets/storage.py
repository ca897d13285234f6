"""The one place where inat-assets touches files.

Every output path is built here from the data directory, and every write that must never leave a
partial file under its final name goes through `atomic_path` / `atomic_write_bytes`. Today the
data directory is a local folder; object storage (``s3://...``) will be added behind this same
interface, which is why callers ask for paths and URIs here instead of joining strings themselves.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from inat_assets.errors import StorageError

_UNSUPPORTED_SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "http://", "https://")




def _temporary_beside(final: Path) -> tuple[int, Path]:
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    except FileNotFoundError:  # first file in a new folder; mkdir only then (it is a syscall per file)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    return fd, Path(name)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary name starts with ``.`` and ends with ``.part`` so that readers listing the folder
    (and the rerun logic that skips finished files) never mistake it for a finished file. A crash
    at any moment leaves at most a ``.part`` file, never a partial file under the final name.
    """
    fd, tmp = _temporary_beside(final)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(final: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``final`` atomically (temporary file, then rename), through one descriptor."""
    fd, tmp = _temporary_beside(final)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
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

    def scratch_dir(self, *parts: str) -> Path:
        """Working space (FIFOs, DuckDB spill files, extracted members); safe to delete when idle."""
        return self.ensure_dir("tmp", *parts)
