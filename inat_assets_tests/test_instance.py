"""The packaged dagster.yaml loads as declared, and DAGSTER_HOME defaults to the data directory's own folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, build_resources
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator

from inat_assets.instance import (
    HOST_BUDGET_FILE,
    POSTGRES_URL_ENV,
    InstanceConfigError,
    default_dagster_home,
    ensure_dagster_home,
    export_line,
    host_budget_url,
    open_instance,
    packaged_dagster_yaml,
)
from inat_assets.resources import PhotoDownloaderResource
from inat_assets_tests.postgres_server import PostgresServer


def test_packaged_dagster_yaml_declares_queue_download_pool_retries_and_no_telemetry(tmp_path: Path) -> None:
    instance = open_instance(tmp_path / "home")
    try:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config is not None
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        assert concurrency.pool_config.default_pool_limit == 3
        downloads = instance.event_log_storage.get_concurrency_info("inat_downloads")
        assert (downloads.limit, downloads.slot_count) == (3, 3)  # a row from the start: the queue counts it
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


def test_the_postgres_variant_is_the_packaged_yaml_with_storage_added() -> None:
    sqlite = yaml.safe_load(packaged_dagster_yaml({}))
    postgres = yaml.safe_load(packaged_dagster_yaml({POSTGRES_URL_ENV: "postgresql+psycopg2://x@h/d"}))
    assert "storage" not in sqlite
    assert postgres.pop("storage") == {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV}}}
    assert postgres == sqlite  # one configuration: queue, pool, retries, monitoring, telemetry


def _downloader_budget(instance: DagsterInstance) -> str:
    with build_resources({"downloader": PhotoDownloaderResource()}, instance=instance) as resources:
        config = resources.downloader.download_config(retries=0, try_other_host=False, processes=1)
    return config.host_budget


def test_a_sqlite_instance_shares_the_host_budget_through_a_file_in_its_home(tmp_path: Path) -> None:
    instance = open_instance(tmp_path / "home")
    try:
        expected = f"sqlite:///{tmp_path / 'home' / HOST_BUDGET_FILE}"
        assert host_budget_url(instance) == expected
        assert _downloader_budget(instance) == expected  # what every batch run of the instance is handed
    finally:
        instance.dispose()
    assert PhotoDownloaderResource(host_budget="sqlite:////shared/b.db").shared_budget == "sqlite:////shared/b.db"


def test_postgres_url_selects_the_postgres_instance_and_its_database_holds_the_host_budget(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POSTGRES_URL_ENV, postgres_url)  # Dagster reads it when the instance loads
    home = ensure_dagster_home(tmp_path / "home")
    assert (home / "dagster.yaml").read_bytes() == packaged_dagster_yaml()
    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        downloads = instance.event_log_storage.get_concurrency_info("inat_downloads")
        assert (downloads.limit, downloads.slot_count) == (3, 3)
        assert instance.run_retries_enabled and instance.run_monitoring_enabled
        assert host_budget_url(instance) == postgres_url
        assert _downloader_budget(instance) == postgres_url
    finally:
        instance.dispose()


def test_a_sqlite_instance_moves_to_postgres_but_never_back_silently(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    ensure_dagster_home(home)
    assert b"postgres" not in (home / "dagster.yaml").read_bytes()
    monkeypatch.setenv(POSTGRES_URL_ENV, postgres.create_database())
    ensure_dagster_home(home)  # the packaged SQLite yaml is replaced by the PostgreSQL one
    assert (home / "dagster.yaml").read_bytes() == packaged_dagster_yaml()
    monkeypatch.delenv(POSTGRES_URL_ENV)
    with pytest.raises(InstanceConfigError, match=f"{POSTGRES_URL_ENV} is not set"):
        ensure_dagster_home(home)
    assert b"postgres_url" in (home / "dagster.yaml").read_bytes()  # left as it was


def test_a_postgres_url_without_the_driver_is_refused_with_the_form_to_use(tmp_path: Path) -> None:
    with pytest.raises(InstanceConfigError, match=r"postgresql\+psycopg2://user:password@host"):
        ensure_dagster_home(tmp_path / "home", {POSTGRES_URL_ENV: "postgresql://u@h:5432/d"})
    assert not (tmp_path / "home").exists()
