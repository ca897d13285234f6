"""writer.LocalWriter: the photo write path behind the engine's PhotoWriter interface."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from pathlib import Path

import pytest

from inat_assets.download import PhotoTask, run_download
from inat_assets.download.writer import LocalWriter
from inat_assets.errors import StorageError
from inat_assets.testing.mirror import MirrorServer, served_bytes
from inat_assets_tests.download.conftest import IMAGE_BYTES, fast_config, files_in, manifest_rows


@pytest.mark.parametrize("threads", [0, 1])
def test_local_writer_writes_lists_and_checks_photos(tmp_path: Path, threads: int) -> None:
    body = served_bytes(5, "original", "jpg", IMAGE_BYTES)
    writer = LocalWriter(threads)
    writer = pickle.loads(pickle.dumps(writer))  # what a worker process receives

    async def scenario() -> None:
        folder = writer.folder(tmp_path / "new" / "batch")
        assert folder == str((tmp_path / "new" / "batch").resolve())
        assert await writer.list_ids(folder) == set()  # an absent folder holds nothing
        uris = await asyncio.gather(*(writer.write(folder, pid, "jpg", body) for pid in (5, 6, 7)))
        assert uris == [f"{folder}/{pid}.jpg" for pid in (5, 6, 7)]
        assert await writer.list_ids(folder) == {5, 6, 7}
        stored = await writer.check(folder, 5, len(body))
        assert stored is not None and (stored.uri, stored.ext, stored.size) == (uris[0], "jpg", len(body))
        assert await writer.check(folder, 6, len(body) + 1) is None  # another size than recorded: removed
        assert await writer.list_ids(folder) == {5, 7}
        await writer.aclose()

    asyncio.run(scenario())
    assert (tmp_path / "new" / "batch" / "7.jpg").read_bytes() == body
    assert [p.name for p in files_in(tmp_path)] == ["5.jpg", "7.jpg"]  # no .part file left


@pytest.mark.parametrize("threads", [0, 1])
def test_a_failed_write_is_a_storage_error_and_leaves_nothing(tmp_path: Path, threads: int) -> None:
    (tmp_path / "file").write_bytes(b"not a folder")
    writer = LocalWriter(threads)

    async def scenario() -> None:
        try:
            with pytest.raises(StorageError, match=r"cannot write .*/file/sub/1\.jpg"):
                await writer.write(str(tmp_path / "file" / "sub"), 1, "jpg", b"\xff\xd8\xff")
        finally:
            await writer.aclose()

    asyncio.run(scenario())
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_the_manifest_digest_is_the_files_sha256(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({3: ["gzip"]})  # hashed after decoding: the digest is of the bytes on disk
    run_download([PhotoTask(pid, mirror.url(pid)) for pid in (1, 2, 3)], tmp_path, tmp_path / "m.parquet",
                 fast_config())
    for pid, row in manifest_rows(tmp_path / "m.parquet").items():
        assert row["sha256"] == hashlib.sha256((tmp_path / f"{pid}.jpg").read_bytes()).hexdigest(), pid
