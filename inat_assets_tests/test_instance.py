"""The packaged dagster.yaml loads as declared, and DAGSTER_HOME defaults to the data directory's own folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator

from inat_assets.instance import (
    default_dagster_home,
    ensure_dagster_home,
    export_line,
    open_instance,
    packaged_dagster_yaml,
)


def test_packaged_dagster_yaml_declares_queue_download_pool_retries_and_no_telemetry(tmp_path: Path) -> None:
    instance = open_instance(tmp_path / "home")
    try:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config is not None
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        assert concurrency.pool_config.default_pool_limit == 1
        downloads = instance.event_log_storage.get_concurrency_info("inat_downloads")
        assert (downloads.limit, downloads.slot_count) == (1, 1)  # a row from the start: the queue counts it
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure  # failed batches belong to the sensor
        assert instance.run_monitoring_enabled
        assert instance.get_settings("telemetry") == {"enabled": False}
        assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"
        assert Path(instance.root_directory) == tmp_path / "home"
    finally:
        instance.dispose()


def test_dagster_home_defaults_to_the_data_dirs_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("INAT_DATA_DIR", str(tmp_path / "data"))
    assert default_dagster_home() == tmp_path / "data" / "dagster_home"
    home = ensure_dagster_home()
    assert (home / "dagster.yaml").read_bytes() == packaged_dagster_yaml()


def test_explicit_dagster_home_wins_and_its_own_dagster_yaml_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    monkeypatch.setenv("DAGSTER_HOME", str(mine))
    monkeypatch.setenv("INAT_DATA_DIR", str(tmp_path / "data"))
    assert ensure_dagster_home() == mine
    assert (mine / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"


def test_export_line_quotes_paths_with_spaces(tmp_path: Path) -> None:
    assert export_line(tmp_path / "my data" / "dagster_home") == f"export DAGSTER_HOME='{tmp_path}/my data/dagster_home'"


def test_a_download_pool_limit_set_by_hand_is_kept(tmp_path: Path) -> None:
    instance = open_instance(tmp_path / "home")
    try:
        instance.event_log_storage.set_concurrency_slots("inat_downloads", 3)
    finally:
        instance.dispose()
    instance = open_instance(tmp_path / "home")
    try:
        assert instance.event_log_storage.get_concurrency_info("inat_downloads").slot_count == 3
    finally:
        instance.dispose()
