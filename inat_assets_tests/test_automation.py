"""The graph runs itself: source observation, automation conditions, schedule and the batch-fill sensor.

Sensor ticks run against a real instance (instance_for_test) holding today's `image_batches` asset and
its `image_batch_partitions`; failed batches come from real failing runs of that asset, queued runs
are created in the run storage the way the daemon creates them, and time is a fake clock.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunsFilter,
    SensorDefinition,
    build_schedule_context,
    build_sensor_context,
    define_asset_job,
    evaluate_automation_conditions,
    instance_for_test,
    materialize,
)
from dagster._core.test_utils import create_run_for_test

from inat_assets import definitions
from inat_assets.automation import (
    ATTEMPT_TAG,
    DWCA_SOURCE_KEY,
    BatchFillPolicy,
    batch_fill_sensor,
    decode_cursor,
    dwca_source,
    dwca_source_observation_job,
)
from inat_assets.batches import write_outdated
from inat_assets.dwca.archive import ArchiveError
from inat_assets.dwca.observe import observe_archive
from inat_assets.errors import InatAssetsError
from inat_assets.resources import DataStoreResource
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.conftest import settings_for

IMAGES = definitions.defs.get_assets_def(AssetKey(["plants", "image_batches"]))
FETCH = definitions.defs.get_assets_def(AssetKey(["plants", "fetch_parquet"]))
image_batch_partitions = IMAGES.partitions_def
assert image_batch_partitions is not None
KEYS = [f"batch-{i:06d}" for i in range(10)]
CHAIN = {"dwca_archive", "observations_parquet", "media_parquet", "plants/fetch_parquet", "fungi_open/fetch_parquet"}


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(image_batch_partitions.name, KEYS)
        yield instance


class Ticker:
    """Evaluates a sensor the way the daemon does: one cursor carried from tick to tick."""

    def __init__(self, sensor: SensorDefinition, instance: DagsterInstance, data_dir: Path | None = None) -> None:
        self.sensor, self.instance, self.cursor = sensor, instance, None
        self.store = DataStoreResource(data_dir=str(data_dir or Path(instance.root_directory) / "data"))

    def tick(self) -> list[tuple[str, int]]:
        context = build_sensor_context(instance=self.instance, cursor=self.cursor, resources={"store": self.store})
        result = self.sensor(context)
        self.cursor = result.cursor
        return [(r.partition_key, int(r.tags[ATTEMPT_TAG])) for r in result.run_requests or []]


def start_run(instance: DagsterInstance, key: str) -> str:
    """A running batch run as the run storage holds it (queued runs need a code location origin)."""
    run = create_run_for_test(
        instance,
        job_name="__ASSET_JOB",
        status=DagsterRunStatus.STARTED,
        tags={"dagster/partition": key},
        asset_selection=frozenset({IMAGES.key}),
    )
    return run.run_id


def finish_started_runs(instance: DagsterInstance) -> None:
    for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        instance.delete_run(record.dagster_run.run_id)


def fail_batch(instance: DagsterInstance, key: str, tmp_path: Path) -> None:
    """A real failed run of image_batches: no batches.json in an empty data dir fails without retries."""
    result = materialize(
        [IMAGES],
        instance=instance,
        partition_key=key,
        resources=settings_for(tmp_path / "unused.zip", tmp_path / "empty"),
        raise_on_error=False,
    )
    assert not result.success


def succeed_batch(instance: DagsterInstance, key: str) -> None:
    instance.report_runless_asset_event(AssetMaterialization(asset_key=IMAGES.key, partition=key))


# --- the batch-fill sensor -------------------------------------------------------------------------


def test_first_fill_requests_at_most_runs_in_flight_batches_in_key_order(instance: DagsterInstance) -> None:
    sensor = batch_fill_sensor(IMAGES, "images", policy=BatchFillPolicy(runs_in_flight=4))
    assert Ticker(sensor, instance).tick() == [(key, 1) for key in KEYS[:4]]


def test_in_flight_runs_use_the_budget_and_their_batches_are_never_requested_twice(
    instance: DagsterInstance,
) -> None:
    ticker = Ticker(batch_fill_sensor(IMAGES, "images", policy=BatchFillPolicy(runs_in_flight=3)), instance)
    start_run(instance, KEYS[5])  # someone launched batch 5 from the UI
    first = ticker.tick()
    assert first == [(KEYS[0], 1), (KEYS[1], 1)]
    for key, _ in first:
        start_run(instance, key)
    assert ticker.tick() == []  # 3 runs in flight: budget used, nothing duplicated
    finish_started_runs(instance)
    for key in (KEYS[0], KEYS[1], KEYS[5]):
        succeed_batch(instance, key)
    assert ticker.tick() == [(KEYS[2], 1), (KEYS[3], 1), (KEYS[4], 1)]


def test_failed_batch_is_retried_with_exponential_backoff_then_given_up(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    for key in KEYS[1:]:
        succeed_batch(instance, key)
    clock = FakeClock()
    policy = BatchFillPolicy(runs_in_flight=4, retry_limit=2, retry_base_seconds=100)
    ticker = Ticker(batch_fill_sensor(IMAGES, "images", policy=policy, clock=clock), instance)
    key = KEYS[0]
    assert ticker.tick() == [(key, 1)]
    fail_batch(instance, key, tmp_path)

    clock.now += 1  # failure 1 seen at t1: first retry at t1 + 100
    assert ticker.tick() == []
    clock.now += 99
    assert ticker.tick() == []
    clock.now += 1
    assert ticker.tick() == [(key, 2)]
    start_run(instance, key)  # the daemon creates the requested run within the tick
    assert ticker.tick() == []  # in flight: neither a new failure nor requested again
    finish_started_runs(instance)
    fail_batch(instance, key, tmp_path)

    clock.now += 1  # failure 2 seen at t2: next retry at t2 + 200
    assert ticker.tick() == []
    clock.now += 199
    assert ticker.tick() == []
    clock.now += 1
    assert ticker.tick() == [(key, 3)]
    fail_batch(instance, key, tmp_path)

    clock.now += 1  # failure 3 > retry_limit 2: left failed, and visible in the cursor and status
    assert ticker.tick() == []
    clock.now += 10**7
    assert ticker.tick() == []
    assert decode_cursor(ticker.cursor)[key].failures == 3
    status = instance.get_status_by_partition(IMAGES.key, [key], image_batch_partitions)
    assert status is not None and status[key].value == "FAILED"

    succeed_batch(instance, key)  # materialized by hand: forgotten by the cursor
    assert ticker.tick() == []
    assert decode_cursor(ticker.cursor) == {}


def test_new_batch_keys_after_a_fetch_list_rebuild_are_requested(instance: DagsterInstance) -> None:
    for key in KEYS:
        succeed_batch(instance, key)
    ticker = Ticker(batch_fill_sensor(IMAGES, "images", policy=BatchFillPolicy(runs_in_flight=4)), instance)
    assert ticker.tick() == []
    instance.add_dynamic_partitions(image_batch_partitions.name, ["batch-000010", "batch-000011"])
    assert ticker.tick() == [("batch-000010", 1), ("batch-000011", 1)]


def test_batches_whose_photos_changed_are_requested_again_until_redone(instance: DagsterInstance) -> None:
    """A changed declaration leaves materialized batches whose photo set changed: the fetch list records
    them, the sensor requests them like missing ones, and stops once each was materialized again."""
    for key in KEYS:
        succeed_batch(instance, key)
    ticker = Ticker(batch_fill_sensor(IMAGES, "plants", policy=BatchFillPolicy(runs_in_flight=4)), instance)
    assert ticker.tick() == []
    write_outdated(ticker.store.get().outdated_batches("plants"), ["batch-000002", "batch-000005"])
    assert ticker.tick() == [("batch-000002", 1), ("batch-000005", 1)]
    succeed_batch(instance, "batch-000002")  # downloaded again after the record
    assert ticker.tick() == [("batch-000005", 1)]
    succeed_batch(instance, "batch-000005")
    assert ticker.tick() == []


def test_sensor_cursor_holds_only_failed_batches_and_survives_garbage() -> None:
    assert decode_cursor("not json") == {}
    assert decode_cursor(None) == {}


def test_batch_fill_policy_reads_env_and_rejects_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INAT_BATCH_RUNS_IN_FLIGHT", "2")
    monkeypatch.setenv("INAT_BATCH_RETRY_LIMIT", "7")
    monkeypatch.setenv("INAT_BATCH_RETRY_BASE_SECONDS", "30")
    policy = BatchFillPolicy.from_env()
    assert (policy.runs_in_flight, policy.retry_limit, policy.retry_base_seconds) == (2, 7, 30.0)
    assert [policy.delay(n) for n in (1, 2, 3)] == [30.0, 60.0, 120.0]
    assert BatchFillPolicy(retry_base_seconds=3600).delay(10) == 6 * 3600.0  # capped
    monkeypatch.setenv("INAT_BATCH_RUNS_IN_FLIGHT", "four")
    with pytest.raises(InatAssetsError, match="INAT_BATCH_RUNS_IN_FLIGHT"):
        BatchFillPolicy.from_env()


def test_batch_fill_sensor_refuses_an_unpartitioned_asset() -> None:
    with pytest.raises(InatAssetsError, match="fetch_parquet"):
        batch_fill_sensor(FETCH, "plants")


# --- what is off by default ---------------------------------------------------------------------------


def test_every_schedule_and_sensor_is_stopped_by_default() -> None:
    repo = definitions.defs.get_repository_def()
    assert {s.name for s in repo.schedule_defs} == {"dwca_source_weekly"}
    assert {s.name for s in repo.sensor_defs} == {"archive_automation", "plants_batch_fill", "fungi_open_batch_fill"}
    assert all(s.default_status == DefaultScheduleStatus.STOPPED for s in repo.schedule_defs)
    assert all(s.default_status == DefaultSensorStatus.STOPPED for s in repo.sensor_defs)


def test_weekly_schedule_requests_an_observation_of_the_source_only(instance: DagsterInstance) -> None:
    schedule = definitions.defs.get_schedule_def("dwca_source_weekly")
    assert schedule.cron_schedule == "0 4 * * 2" and schedule.execution_timezone == "UTC"
    data = schedule.evaluate_tick(build_schedule_context(instance=instance))
    assert len(data.run_requests or []) == 1
    job = definitions.defs.resolve_job_def(schedule.job_name)
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {"dwca_source"}


# --- observing the archive and following it -----------------------------------------------------------


def _requested(result) -> set[str]:  # type: ignore[no-untyped-def]
    keys = definitions.defs.resolve_asset_graph().get_all_asset_keys()
    return {k.to_user_string() for k in keys if result.get_num_requested(k)}


def test_unchanged_archive_requests_nothing_and_a_touched_one_requests_the_chain(
    sample_45: SampleArchiveInfo, tmp_path: Path
) -> None:
    archive = Path(shutil.copyfile(sample_45.path, tmp_path / "dwca.zip"))
    resources = settings_for(archive, tmp_path / "data", duckdb_threads=2)
    # What the README's first command does by hand: observe the source and build every unpartitioned asset.
    chain_job = define_asset_job(
        "chain_job",
        selection=AssetSelection.assets(DWCA_SOURCE_KEY)
        | (AssetSelection.all() - AssetSelection.assets(*(a.key for a in definitions.defs.assets if getattr(a, "partitions_def", None)))),
    )
    defs = Definitions(
        assets=list(definitions.defs.assets or []),
        jobs=[chain_job, dwca_source_observation_job],
        resources=resources,
    )
    with instance_for_test() as instance:
        assert evaluate_automation_conditions(defs, instance).total_requested == 0  # never observed: nothing
        assert defs.resolve_job_def("chain_job").execute_in_process(instance=instance).success
        result = evaluate_automation_conditions(defs, instance)
        assert result.total_requested == 0

        observe = defs.resolve_job_def("dwca_source_observation")
        assert observe.execute_in_process(instance=instance).success  # same size and mtime
        result = evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        assert result.total_requested == 0

        stat = archive.stat()
        os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 60 * 10**9))  # republished
        assert observe.execute_in_process(instance=instance).success
        result = evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        assert _requested(result) == CHAIN

        result = evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        assert result.total_requested == 0  # requested once, not on every tick


class _HeadServer:
    """A HEAD-only archive endpoint: answers 304 to a matching If-None-Match, counts what it was sent."""

    def __init__(self) -> None:
        self.etag: str | None = '"v1"'
        self.last_modified: str | None = "Tue, 17 Nov 2026 04:00:00 GMT"
        self.requests: list[dict[str, str]] = []

    def __enter__(self) -> str:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                state.requests.append(dict(self.headers.items()))
                matched = state.etag is not None and self.headers.get("If-None-Match") == state.etag
                self.send_response(304 if matched else 200)
                if state.etag:
                    self.send_header("ETag", state.etag)
                if state.last_modified:
                    self.send_header("Last-Modified", state.last_modified)
                self.send_header("Content-Length", "0" if matched else "25000000000")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}/gbif-observations-dwca.zip"

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_url_source_is_observed_with_a_conditional_head_and_versioned_by_etag() -> None:
    server = _HeadServer()
    with server as url:
        first = observe_archive(url)
        assert (first.version, first.size, first.not_modified) == ('etag:"v1"', 25_000_000_000, False)
        again = observe_archive(url, previous=first)
        assert server.requests[-1]["If-None-Match"] == '"v1"'
        assert server.requests[-1]["If-Modified-Since"] == first.last_modified
        assert again.not_modified and again.version == first.version
        server.etag = '"v2"'
        assert observe_archive(url, previous=first).version == 'etag:"v2"'
        server.etag = None  # Last-Modified (and size) identify it then
        assert observe_archive(url).version == "last-modified:Tue, 17 Nov 2026 04:00:00 GMT:25000000000"
        server.last_modified = None
        with pytest.raises(ArchiveError, match="neither ETag nor Last-Modified"):
            observe_archive(url)


def test_dwca_source_sends_the_previous_observations_validators(tmp_path: Path) -> None:
    server = _HeadServer()
    with server as url, instance_for_test() as instance:
        defs = Definitions(
            assets=[dwca_source],
            jobs=[dwca_source_observation_job],
            resources=settings_for(url, tmp_path),
        )
        job = defs.resolve_job_def("dwca_source_observation")
        assert job.execute_in_process(instance=instance).success
        assert "If-None-Match" not in server.requests[-1]
        assert job.execute_in_process(instance=instance).success
        assert server.requests[-1]["If-None-Match"] == '"v1"'
        record = instance.get_latest_data_version_record(AssetKey("dwca_source"), is_source=True)
        assert record is not None and record.asset_observation is not None
        assert record.asset_observation.tags["dagster/data_version"] == 'etag:"v1"'


def test_local_source_version_is_size_and_mtime_and_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    archive = tmp_path / "dwca.zip"
    archive.write_bytes(b"PK" + b"\0" * 100)
    first = observe_archive(str(archive))
    assert first.version == observe_archive(str(archive)).version
    archive.write_bytes(b"PK" + b"\0" * 101)
    assert observe_archive(str(archive)).version != first.version
    with pytest.raises(ArchiveError, match="INAT_DWCA_SOURCE"):
        observe_archive(str(tmp_path / "absent.zip"))


def test_a_changed_declaration_code_version_requests_the_asset_again() -> None:
    from dagster import asset

    from inat_assets.automation import ARCHIVE_CHAIN_CONDITION

    def declared(version: str):  # type: ignore[no-untyped-def]
        @asset(name="fetch_list", code_version=version, automation_condition=ARCHIVE_CHAIN_CONDITION)
        def fetch_list() -> None:
            return None

        return fetch_list

    with instance_for_test() as instance:
        assert materialize([declared("kingdom=Plantae")], instance=instance).success
        result = evaluate_automation_conditions([declared("kingdom=Plantae")], instance)
        assert result.total_requested == 0
        result = evaluate_automation_conditions([declared("kingdom=Plantae")], instance, cursor=result.cursor)
        assert result.total_requested == 0
        result = evaluate_automation_conditions([declared("kingdom=Fungi")], instance, cursor=result.cursor)
        assert result.total_requested == 1
