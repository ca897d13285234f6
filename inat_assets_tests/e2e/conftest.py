"""One real `inat-assets ui --demo` for all e2e tests, filled once: the unpartitioned chain, then every
image batch of every declared dataset with no further request than turning the batch-fill sensors on,
while the mirror fails one batch's first attempt."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from inat_assets.assets.images import ImageBatchConfig
from inat_assets.batches import batch_range, load_span
from inat_assets.definitions import defs
from inat_assets.dwca.convert import sql_string
from inat_assets.testing.mirror import MirrorServer, serve_mirror
from inat_assets_tests.e2e.graphql_client import RUN_DONE, PartitionStatuses, wait_for
from inat_assets_tests.e2e.harness import RunningUi, demo_ui

# Timeouts of each phase (seen here on 2 busy cores: chain ~15 s; batches ~40 s, of which up to 60 s
# more is image_batches' RetryPolicy delay, 30 s +- 30 s of jitter, before the failed batch's retry).
CHAIN_TIMEOUT = 180.0
FILL_TIMEOUT = 300.0
# A photo fails with 503 (Retry-After: 0, so the engine's retries do not wait) more often than the
# engine retries within one attempt, then succeeds: the batch's first attempt fails, the retry works.
FAILING_REQUESTS = ImageBatchConfig().retries + 1
_PHOTO_PATH = re.compile(r"^/photos/(\d+)/")
# The batch-fill sensors of the declared datasets (one per partitioned image asset, named after its prefix).
BATCH_FILL_SENSORS = sorted(s.name for s in defs.sensors if s.name.endswith("_batch_fill"))


@dataclass(frozen=True)
class ExpectedGraph:
    """What the loaded Definitions declare: asset key -> parent keys, and which are partitioned."""

    parents: dict[str, frozenset[str]]  # every asset the UI draws, observable sources included
    partitioned: frozenset[str]
    materializable: frozenset[str]

    @property
    def unpartitioned(self) -> list[str]:
        return sorted(self.materializable - self.partitioned)


def expected_graph() -> ExpectedGraph:
    graph = defs.resolve_asset_graph()
    nodes = [graph.get(k) for k in graph.get_all_asset_keys()]
    return ExpectedGraph(
        parents={n.key.to_user_string(): frozenset(p.to_user_string() for p in n.parent_keys) for n in nodes},
        partitioned=frozenset(n.key.to_user_string() for n in nodes if n.partitions_def is not None),
        materializable=frozenset(k.to_user_string() for k in graph.materializable_asset_keys),
    )


@dataclass
class FilledDemo:
    ui: RunningUi
    mirror: MirrorServer
    expected: ExpectedGraph
    chain_run_status: str
    faulted_batch: str  # partition key whose first attempt fails
    faulted_photos: frozenset[int]
    fetch_list_photos: frozenset[int]  # every photo id of every fetch list
    sensors: dict[str, str]  # batch-fill sensor -> its status once turned on
    partitions: dict[str, PartitionStatuses]  # partitioned asset -> statuses at the end
    seconds: dict[str, float]


def fetch_list_photo_ids(data_dir: Path, lo: int = 0, hi: int = 2**63 - 1) -> frozenset[int]:
    """Photo ids with lo <= id < hi in every fetch list under the data dir (one today, one per dataset later)."""
    lists = sorted(data_dir.rglob("fetch.parquet"))
    assert lists, f"no fetch.parquet under {data_dir}"
    union = " UNION ".join(f"SELECT photo_id FROM read_parquet({sql_string(p)})" for p in lists)
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT DISTINCT photo_id FROM ({union}) WHERE photo_id >= ? AND photo_id < ?", [lo, hi])
        return frozenset(r[0] for r in rows.fetchall())


def photo_downloads(mirror: MirrorServer, faulted: frozenset[int]) -> Counter[str]:
    """Successful serves per photo path: hits, less the planned failures of faulted photos."""
    served: Counter[str] = Counter()
    for path, hits in mirror.path_hits.items():
        match = _PHOTO_PATH.match(path)
        if match:
            served[path] = hits - (FAILING_REQUESTS if int(match[1]) in faulted else 0)
    return served


def _fill(ui: RunningUi, mirror: MirrorServer) -> FilledDemo:
    client, expected, seconds = ui.client, expected_graph(), {}
    started = time.monotonic()
    # As the README's first command: the archive source is observed in the same run as the chain.
    observable = sorted(set(expected.parents) - expected.materializable)
    run_id = client.launch_assets(ui.location, [*observable, *expected.unpartitioned])
    chain_status = wait_for("the unpartitioned chain's run", lambda: _done(client.run_status(run_id)), CHAIN_TIMEOUT)
    seconds["chain"] = time.monotonic() - started
    assert chain_status == "SUCCESS", f"the chain's run {run_id} ended {chain_status}; see {ui.log_path}"

    partitioned = sorted(expected.partitioned)
    keys = sorted(client.partition_statuses(partitioned[0]).unmaterialized)
    assert keys, f"{partitioned[0]} has no partitions after the chain's run"
    faulted_batch = keys[0]
    span = load_span(ui.data_dir / "batches.json")
    assert span, f"{ui.data_dir / 'batches.json'} has no span"
    lo, hi = batch_range(faulted_batch, span)
    # Every other photo of the batch fails on the first attempt (50 % > the 2 % transient share): the
    # retry must fetch those and leave the other half, already on disk, alone.
    faulted_photos = frozenset(sorted(fetch_list_photo_ids(ui.data_dir, lo, hi))[::2])
    mirror.set_faults({pid: ["503:0"] * FAILING_REQUESTS + ["ok"] for pid in faulted_photos})

    started = time.monotonic()
    # What a user does: turn on each dataset's batch-fill sensor; the daemon does the rest.
    sensors = {name: client.start_sensor(ui.location, name) for name in BATCH_FILL_SENSORS}

    def settled() -> dict[str, PartitionStatuses] | None:
        statuses = {key: client.partition_statuses(key) for key in partitioned}
        return None if any(s.materializing or s.unmaterialized for s in statuses.values()) else statuses

    partitions = wait_for(f"the batch-fill sensors {sorted(sensors)}", settled, FILL_TIMEOUT, interval=1.0)
    for name in BATCH_FILL_SENSORS:
        client.stop_sensor(ui.location, name)
    seconds["batches"] = time.monotonic() - started
    return FilledDemo(
        ui=ui,
        mirror=mirror,
        expected=expected,
        chain_run_status=chain_status,
        faulted_batch=faulted_batch,
        faulted_photos=faulted_photos,
        fetch_list_photos=fetch_list_photo_ids(ui.data_dir),
        sensors=sensors,
        partitions=partitions,
        seconds=seconds,
    )


def _done(status: str) -> str | None:
    return status if status in RUN_DONE else None


@pytest.fixture(scope="session")
def filled_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilledDemo]:
    root = tmp_path_factory.mktemp("e2e")
    # Every demo batch is requested on the sensors' first tick: with the default limit (4 in flight) the
    # rest waited for the next tick, 60 s later. The limit itself is pinned by test_automation.py.
    with serve_mirror(("127.0.0.1",)) as mirror, demo_ui(
        root, mirror.base_url(), extra_env={"INAT_BATCH_RUNS_IN_FLIGHT": "1000"}
    ) as ui:
        yield _fill(ui, mirror)
