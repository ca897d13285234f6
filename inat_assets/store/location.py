"""One object (or prefix) on an object store, with the part of pathlib the engines use.

A `Location` is what `DataStore` hands out instead of a `Path` when INAT_DATA_DIR is a URL. It has
``name``, ``parent``, ``/``, ``exists()``, ``read_bytes()``, ``unlink()``, ``glob()``, ``stat()``,
``open()``... so code written against that subset runs on both, and it deliberately has no
``__fspath__``: ``open(location)``, ``os.replace`` or ``Path(location)`` fail with a TypeError instead of
writing a local folder named ``s3:`` (what the demo did before this seam existed).

Writes are whole objects: ``write_bytes`` is one PUT, and `inat_assets.storage.atomic_path` stages a
file in ``staging`` (local scratch) and uploads it once complete, so an object is either the previous
one or the new one, never a partial file. There is no rename on a store: nothing here offers one.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import IO, TYPE_CHECKING, Any

from inat_assets.errors import StorageError

if TYPE_CHECKING:  # fsspec is imported where a store is opened: 21 ms less for every process that writes local files
    from fsspec import AbstractFileSystem


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (``s3``, ``bucket/prefix``)."""
    protocol, _, rest = url.partition("://")
    return protocol.lower(), rest.strip("/")


def open_filesystem(url: str) -> AbstractFileSystem:
    """The fsspec filesystem for ``url``; credentials and endpoint come from the environment.

    For ``s3://`` that is botocore's chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile,
    an instance role), AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for an S3-compatible server (MinIO,
    Ceph, moto). Directory listings are not cached: another worker's manifests and photos written
    since the last listing must be seen (a stale listing would re-download or miss outdated batches).
    """
    import fsspec

    protocol, _ = split_url(url)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        hint = "pip install 'inat-assets[s3]'" if protocol in ("s3", "s3a") else f"the fsspec backend for {protocol}://"
        raise StorageError(
            f"INAT_DATA_DIR={url!r}: no filesystem for {protocol}:// ({exc}). Install {hint}, or point "
            "INAT_DATA_DIR at a local folder."
        ) from None
    options: dict[str, Any] = {"use_listings_cache": False}
    if protocol in ("s3", "s3a"):
        # One connection per request in flight: photo uploads run up to this many PUTs at once (see
        # inat_assets.download.object_writer); botocore's default pool of 10 would queue the rest.
        options["config_kwargs"] = {"max_pool_connections": 64}
    return cls(**options)


@dataclass(frozen=True, eq=False)
class Location:
    """``path`` (``bucket/key``, no protocol) on ``fs``; files bound for it are staged in ``staging``."""

    fs: AbstractFileSystem = field(repr=False)
    path: str
    staging: Path = field(repr=False)

    # --- names -----------------------------------------------------------------------------------
    @property
    def protocol(self) -> str:
        protocol = self.fs.protocol
        return protocol if isinstance(protocol, str) else protocol[0]

    def __str__(self) -> str:
        return f"{self.protocol}://{self.path}"

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: Location) -> bool:  # sorted() of manifests, as for paths
        return str(self) < str(other)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)]

    @property
    def parent(self) -> Location:
        return Location(self.fs, posixpath.dirname(self.path), self.staging)

    def joinpath(self, *parts: str) -> Location:
        path = self.path
        for part in parts:
            path = posixpath.join(path, str(part).strip("/"))
        return Location(self.fs, path, self.staging)

    def __truediv__(self, part: str) -> Location:
        return self.joinpath(part)

    def with_name(self, name: str) -> Location:
        return self.parent / name

    def relative_to(self, other: Location) -> str:
        if not self.path.startswith(other.path.rstrip("/") + "/"):
            raise ValueError(f"{self} is not under {other}")
        return self.path[len(other.path.rstrip("/")) + 1 :]

    def resolve(self) -> Location:
        return self

    # --- reading -----------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_file(self) -> bool:
        return self.fs.isfile(self.path)

    def is_dir(self) -> bool:
        """True when some object's key starts with this prefix (stores have no folders of their own)."""
        return self.fs.isdir(self.path)

    def stat(self) -> SimpleNamespace:
        info = self.fs.info(self.path)
        modified = info.get("LastModified") or info.get("mtime") or info.get("created")
        return SimpleNamespace(st_size=int(info.get("size") or 0), st_mtime=_timestamp(modified), etag=info.get("ETag"))

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open(self, mode: str = "rb", **kwargs: Any) -> IO[Any]:
        if "r" not in mode:
            raise StorageError(f"{self}: open it for reading only; writes go through storage.atomic_path (one PUT)")
        return self.fs.open(self.path, mode, **kwargs)

    def iterdir(self) -> Iterator[Location]:
        """The objects and sub-prefixes directly under this prefix (one listing of this prefix only)."""
        try:
            names = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return
        for name in sorted(names):
            if name.rstrip("/") != self.path:
                yield Location(self.fs, name.rstrip("/"), self.staging)

    def glob(self, pattern: str) -> list[Location]:
        """Objects matching ``pattern`` under this prefix; lists this prefix only, never the bucket."""
        return [Location(self.fs, p, self.staging) for p in sorted(self.fs.glob(posixpath.join(self.path, pattern)))]

    # --- writing -----------------------------------------------------------------------------------
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists as soon as an object is written under it."""

    def write_bytes(self, data: bytes) -> int:
        """One PUT: readers see the previous object or this one, never a part of it."""
        self.fs.pipe_file(self.path, data)
        return len(data)

    def upload(self, local: Path) -> None:
        """Upload a finished local file; a large one goes as a multipart upload, which appears only once complete."""
        self.fs.put_file(str(local), self.path)

    def rename(self, target: Location) -> Location:
        """Copy then delete (a store has no rename): not atomic, only for moving a bad object aside."""
        self.fs.mv(self.path, target.path)
        return target

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def create(self, data: bytes) -> str | None:
        """Write ``data`` only if no object is there; its ETag, or None when one already was.

        S3: a conditional PUT (``If-None-Match: *``), so of two writers exactly one succeeds, on one
        machine or many. Other fsspec stores have no portable conditional write: there it is an
        existence check followed by a PUT, which two simultaneous writers can both pass (README).
        """
        if _is_s3(self.fs):
            bucket, key = self.path.split("/", 1)
            try:
                return self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")["ETag"]
            except OSError as exc:
                if _precondition_failed(exc):
                    return None
                raise
        if self.fs.exists(self.path):
            return None
        self.fs.pipe_file(self.path, data)
        return str(self.stat().etag or "")

    def replace_if(self, etag: str, data: bytes) -> str | None:
        """Overwrite only if the object still has ``etag`` (S3 ``If-Match``); its new ETag, or None."""
        if _is_s3(self.fs):
            bucket, key = self.path.split("/", 1)
            try:
                return self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)["ETag"]
            except (OSError, FileNotFoundError) as exc:
                if isinstance(exc, FileNotFoundError) or _precondition_failed(exc):
                    return None
                raise
        try:
            current = self.stat().etag
        except FileNotFoundError:
            return None
        if str(current or "") != etag:
            return None
        self.fs.pipe_file(self.path, data)
        return str(self.stat().etag or "")


def _is_s3(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol
    return "s3" in (protocol if isinstance(protocol, tuple | list) else (protocol,))


def _precondition_failed(exc: OSError) -> bool:
    # s3fs turns HTTP 412 into FileExistsError (If-None-Match) or OSError(EINVAL) (If-Match), and 409
    # ConditionalRequestConflict (a concurrent conditional write on the same key) into another OSError.
    text = str(exc)
    return isinstance(exc, FileExistsError) or (
        exc.errno in (errno.EINVAL, None) and ("PreconditionFailed" in text or "pre-condition" in text or "412" in text)
    ) or "ConditionalRequestConflict" in text


def _timestamp(value: object) -> float:
    if value is None:
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    timestamp = getattr(value, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else 0.0
