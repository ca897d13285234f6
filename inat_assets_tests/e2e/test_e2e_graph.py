"""The real webserver and daemon, through GraphQL: the lineage the UI shows is the declared one, and one
turning on the batch-fill sensors gets every image batch of both datasets materialized although a batch
fails its first attempt."""

from __future__ import annotations

import pytest

from inat_assets_tests.e2e.conftest import FilledDemo, photo_downloads

pytestmark = pytest.mark.e2e


def test_webserver_lineage_edges_are_the_declared_dependencies(filled_demo: FilledDemo) -> None:
    graph = filled_demo.ui.client.asset_graph()
    assert {key: node.parents for key, node in graph.items()} == filled_demo.expected.parents
    assert {key for key, node in graph.items() if node.partitioned} == filled_demo.expected.partitioned


def test_sensors_materialize_every_batch_retrying_the_failed_one_without_downloading_twice(
    filled_demo: FilledDemo,
) -> None:
    demo, client = filled_demo, filled_demo.ui.client
    print(f"e2e timings: {demo.seconds}")
    assert demo.chain_run_status == "SUCCESS"
    assert len(demo.sensors) >= 2 and set(demo.sensors.values()) == {"RUNNING"}, demo.sensors
    for key, statuses in demo.partitions.items():
        assert not statuses.failed and not statuses.unmaterialized, (key, statuses)
        assert len(statuses.materialized) >= 2, f"{key}: the sample should give several batches"

    # The faulted batch's run failed its step once, was retried, and succeeded.
    runs = client.runs({"dagster/partition": demo.faulted_batch})
    assert [r["status"] for r in runs] == ["SUCCESS"] * len(runs) and runs
    events = [kind for run in runs for kind, _ in client.run_event_types(run["runId"])]
    assert "ExecutionStepUpForRetryEvent" in events
    assert events.count("ExecutionStepFailureEvent") == 0  # the retry succeeded; nothing was left failed

    # Every photo of every fetch list was fetched, each exactly once (plus the planned 503s).
    served = photo_downloads(demo.mirror, demo.faulted_photos)
    served_ids = {int(path.split("/")[2]) for path in served}
    assert served_ids == demo.fetch_list_photos
    assert demo.faulted_photos <= served_ids
    twice = {path: n for path, n in served.items() if n != 1}
    assert not twice, f"photos served other than once: {twice}"
