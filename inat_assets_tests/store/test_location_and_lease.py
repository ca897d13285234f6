"""Locations on a real S3 server: whole-object writes, listings of one prefix, leases by conditional PUT."""

from __future__ import annotations

import json
import threading
import time

import pytest

from inat_assets.locks import LockedError
from inat_assets.storage import DataStore, atomic_path, atomic_write_bytes, guarded, list_dir, reading
from inat_assets.store import Location, lease


@pytest.fixture
def store(s3_bucket: str, tmp_path) -> DataStore:
    return DataStore.from_setting(f"s3://{s3_bucket}/data", str(tmp_path / "scratch"))


def test_a_failed_write_leaves_the_previous_object_and_nothing_staged(store: DataStore) -> None:
    target = store.path("x", "table.parquet")
    assert isinstance(target, Location)
    atomic_write_bytes(target, b"first")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of a new version")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"first"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"second")
    assert target.read_bytes() == b"second" and target.stat().st_size == 6
    assert not list((store.scratch_root / "staging").iterdir())  # type: ignore[operator]
    with reading(target) as local:
        assert local.read_bytes() == b"second"
    assert not local.exists()


def test_listings_cover_one_prefix_and_see_other_writers_at_once(store: DataStore) -> None:
    for key in ("photos/medium/batch-000001/1.jpg", "photos/medium/batch-000001/2.jpg",
                "photos/medium/batch-000002/3.jpg", "photos/original/batch-000001/1.jpg"):  # fmt: skip
        atomic_write_bytes(store.path(*key.split("/")), b"abc")
    entries = list_dir(store.path("photos", "medium"))
    assert [(e.name, e.is_dir) for e in entries] == [("batch-000001", True), ("batch-000002", True)]
    assert [(e.name, e.size) for e in list_dir(entries[0].path)] == [("1.jpg", 3), ("2.jpg", 3)]
    assert [loc.name for loc in store.path("photos", "medium", "batch-000001").glob("*.jpg")] == ["1.jpg", "2.jpg"]
    # Another client's write is seen by the next listing (no listing cache).
    other = DataStore.from_setting(store.url)
    atomic_write_bytes(other.path("photos", "medium", "batch-000001", "4.jpg"), b"d")
    assert [e.name for e in list_dir(store.path("photos", "medium", "batch-000001"))] == ["1.jpg", "2.jpg", "4.jpg"]
    assert list_dir(store.path("nothing", "here")) == []


def test_one_lease_holder_at_a_time_across_clients(store: DataStore) -> None:
    key = store.path("locks", "manifest-plants-batch-000001.lease")
    assert isinstance(key, Location)
    first = lease(key, purpose="plants downloading batch-000001")
    other_client = DataStore.from_setting(store.url).path("locks", "manifest-plants-batch-000001.lease")
    with pytest.raises(LockedError, match="plants downloading batch-000001"):
        lease(other_client, purpose="fungi downloading batch-000001")  # type: ignore[arg-type]
    first.release()
    assert not key.exists()
    with guarded(other_client, purpose="second"):
        assert json.loads(key.read_bytes())["purpose"] == "second"
    assert not key.exists()


def test_of_many_simultaneous_takers_exactly_one_wins(store: DataStore) -> None:
    key = store.path("locks", "race.lease")
    winners: list[object] = []
    refused: list[Exception] = []
    start = threading.Barrier(8)

    def take() -> None:
        start.wait()
        try:
            winners.append(lease(key, purpose="race"))  # type: ignore[arg-type]
        except LockedError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 7
    winners[0].release()  # type: ignore[attr-defined]


def test_a_dead_holders_lease_expires_and_is_taken_over_a_live_one_is_renewed(store: DataStore) -> None:
    key = store.path("locks", "batch.lease")
    assert isinstance(key, Location)
    # A holder that died: its record says it expired a second ago.
    key.write_bytes(json.dumps({"pid": 1, "host": "gone", "time": time.time() - 10, "expires": time.time() - 1}).encode())
    taken = lease(key, purpose="after a crash")
    assert json.loads(key.read_bytes())["purpose"] == "after a crash"
    taken.release()
    live = lease(key, purpose="live", seconds=0.8)  # renewed every 0.2 s
    time.sleep(1.5)  # longer than its lifetime: only renewals keep it
    assert not live.lost and json.loads(key.read_bytes())["expires"] > time.time()
    with pytest.raises(LockedError, match="live"):
        lease(key, purpose="intruder", seconds=0.8)
    live.release()


def test_the_batch_fill_sensors_record_of_outdated_batches_reads_from_the_store(store: DataStore) -> None:
    from inat_assets.batches import read_outdated, write_outdated

    record = store.outdated_batches("plants")
    assert read_outdated(record) == ([], 0.0)  # no record yet
    write_outdated(record, ["batch-000003", "batch-000007"])
    keys, written_at = read_outdated(DataStore.from_setting(store.url).outdated_batches("plants"))
    assert keys == ["batch-000003", "batch-000007"] and abs(written_at - time.time()) < 60
