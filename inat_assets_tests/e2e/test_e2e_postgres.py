"""The demo on a Dagster instance in a real PostgreSQL database: `inat-assets ui --demo` (webserver, daemon,
queued run coordinator) with INAT_DAGSTER_POSTGRES_URL set, the image batches of both datasets as
backfills, and several batch runs downloading at the same time, as many as the download pool allows."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from inat_assets.batches import load_span
from inat_assets.instance import POSTGRES_URL_ENV
from inat_assets.photos import batch_key
from inat_assets.testing.mirror import serve_mirror
from inat_assets_tests.e2e.conftest import (
    CHAIN_TIMEOUT,
    FILL_TIMEOUT,
    IN_PROCESS,
    PartitionStatuses,
    expected_graph,
)
from inat_assets_tests.e2e.graphql_client import RUN_DONE, wait_for
from inat_assets_tests.e2e.harness import demo_ui

pytestmark = pytest.mark.e2e

DOWNLOAD_POOL_LIMIT = 3  # the packaged dagster.yaml's concurrency.pools.default_limit
# Slow photos, two at a time per run: each demo batch (~50 photos) then downloads for ~5 s, so runs the
# daemon starts together are seen downloading together, not one finishing before the next starts.
LATENCY_MS = 200
_PHOTO = re.compile(r"^/photos/(\d+)/([a-z_]+)\.")


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of the intervals that cover one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def test_image_batches_run_in_parallel_on_a_postgres_instance(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra_env = {POSTGRES_URL_ENV: postgres_url, "INAT_DOWNLOAD_CONCURRENCY": "2"}
    with serve_mirror(("127.0.0.1",), latency_ms=LATENCY_MS) as mirror, demo_ui(
        tmp_path, mirror.base_url(), "dagster-dev-postgres.log", extra_env
    ) as ui:
        client, expected = ui.client, expected_graph()
        observable = sorted(set(expected.parents) - expected.materializable)
        chain = client.launch_assets(ui.location, [*observable, *expected.unpartitioned], IN_PROCESS)
        status = wait_for("the chain's run", lambda: s if (s := client.run_status(chain)) in RUN_DONE else None,
                          CHAIN_TIMEOUT)
        assert status == "SUCCESS", f"the chain's run ended {status}; see {ui.log_path}"

        partitioned = sorted(expected.partitioned)
        for key in partitioned:  # "Materialize all" on each dataset's image batches: one queued run per batch
            client.launch_backfill_all_partitions([key], IN_PROCESS)

        def settled() -> dict[str, PartitionStatuses] | None:
            statuses = {key: client.partition_statuses(key) for key in partitioned}
            return None if any(s.materializing or s.unmaterialized for s in statuses.values()) else statuses

        statuses = wait_for("the batch backfills", settled, FILL_TIMEOUT, interval=1.0)
        span = load_span(ui.data_dir / "batches.json")
        requests = list(mirror.request_log)

    for key, partition_statuses in statuses.items():
        assert not partition_statuses.failed and len(partition_statuses.materialized) >= 2, (key, partition_statuses)

    # The runs are in PostgreSQL, and went through the queue: the daemon started them.
    monkeypatch.setenv(POSTGRES_URL_ENV, postgres_url)
    instance = DagsterInstance.from_config(str(ui.dagster_home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        records = [r for r in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
                   if "dagster/partition" in r.dagster_run.tags]
        assert len(records) == sum(len(s.materialized) for s in statuses.values())
        for record in records:
            assert instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.RUN_ENQUEUED)
        runs = [(r.start_time, r.end_time) for r in records]
    finally:
        instance.dispose()
    assert all(start is not None and end is not None for start, end in runs)
    # Several run workers at once, and no more than the download pool allows.
    assert 2 <= most_at_once(runs) <= DOWNLOAD_POOL_LIMIT, sorted(runs)  # type: ignore[arg-type]

    # They really downloaded at the same time: the mirror saw two batches' photos requested in one span.
    assert span is not None
    downloads: dict[tuple[str, str], list[float]] = defaultdict(list)
    for when, _, path in requests:
        match = _PHOTO.match(path)
        if match:
            downloads[(match[2], batch_key(int(match[1]), span))].append(when)
    assert len(downloads) == len(records)
    downloading = most_at_once([(min(times), max(times)) for times in downloads.values()])
    print(f"batch runs: {len(records)}, at once: {most_at_once(runs)}, downloading at once: {downloading}")  # type: ignore[arg-type]
    assert downloading >= 2, downloads
