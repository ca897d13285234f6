"""Resources: the settings list exists once (env vars from field names) and hands out ready objects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dagster import build_resources

from inat_assets.download import PhotoTask
from inat_assets.errors import DownloadError
from inat_assets.resources import (
    SETTINGS_RESOURCES,
    DataStoreResource,
    InatDuckDBResource,
    PhotoDownloaderResource,
    env_var,
    inat_resources,
)

REPO = Path(__file__).resolve().parents[1]


def test_every_setting_reads_the_variable_named_after_it_and_the_readme_names_still_work() -> None:
    variables = {env_var(f) for cls in SETTINGS_RESOURCES.values() for f in cls.setting_fields()}
    readme = set(re.findall(r"\bINAT_[A-Z_]+\b", (REPO / "README.md").read_text()))
    assert variables == {
        "INAT_DATA_DIR", "INAT_BATCH_SPAN", "INAT_DWCA_SOURCE", "INAT_CSV_READ_MODE", "INAT_DUCKDB_MEMORY_LIMIT",
        "INAT_DUCKDB_THREADS", "INAT_DUCKDB_TEMP_DIR", "INAT_CONTACT", "INAT_ALLOWED_HOSTS",
        "INAT_DOWNLOAD_CONCURRENCY", "INAT_PHOTO_MIRROR", "INAT_HOST_BUDGET", "INAT_SCRATCH_DIR",
    }  # fmt: skip
    assert variables <= readme
    resources = inat_resources(environ={"INAT_DATA_DIR": "/d", "INAT_DUCKDB_THREADS": "3"}, contact="me@example.org")
    store, duckdb = resources["store"], resources["duckdb"]
    # Set variables become EnvVar (the UI shows where the value came from); the rest keep defaults.
    assert type(store.data_dir).__name__ == "EnvVar" and store.data_dir == "INAT_DATA_DIR"
    assert type(duckdb.duckdb_threads).__name__ == "IntEnvVar"
    assert resources["downloader"].contact == "me@example.org" and resources["dwca"].csv_read_mode == "auto"


def test_duckdb_connections_come_configured(tmp_path: Path) -> None:
    resource = InatDuckDBResource(
        store=DataStoreResource(data_dir=str(tmp_path)), duckdb_memory_limit="300MB", duckdb_threads=1
    )
    with resource.get_connection() as con:
        memory, threads, temp = con.execute(
            "SELECT current_setting('memory_limit'), current_setting('threads'), current_setting('temp_directory')"
        ).fetchone()  # type: ignore[misc]
    assert memory in ("286.1 MiB", "300.0 MB") and int(threads) == 1
    assert Path(temp) == tmp_path / "tmp" / "duckdb"


def test_the_downloader_hands_out_a_config_and_routes_through_the_mirror() -> None:
    downloader = PhotoDownloaderResource(photo_mirror="http://127.0.0.1:8123", download_concurrency=8)
    config = downloader.download_config(retries=2, try_other_host=False, processes=1)
    # The mirror is allowed on its own port only (a bare host would mean ports 80 and 443).
    assert "127.0.0.1:8123" in config.allowed_hosts and "static.inaturalist.org" in config.allowed_hosts
    assert config.concurrency == 8 and config.retries == 2
    task = PhotoTask(7, "https://inaturalist-open-data.s3.amazonaws.com/photos/7/medium.jpg")
    assert downloader.route(task).url == "http://127.0.0.1:8123/photos/7/medium.jpg"
    other = PhotoTask(8, "https://example.org/photos/8/original.jpg")
    assert downloader.route(other) == other


def test_the_real_archive_is_an_explicit_choice() -> None:
    """Unset INAT_DWCA_SOURCE is not the 25 GB official URL: the archive asset says how to choose."""
    from inat_assets.errors import ArchiveError
    from inat_assets.resources import DwcaResource

    with pytest.raises(ArchiveError, match=r"INAT_DWCA_SOURCE is not set.*gbif-observations-dwca.zip.*--demo"):
        DwcaResource.from_env(environ={}).source()
    assert DwcaResource(dwca_source="/data/dwca.zip").source() == "/data/dwca.zip"


def test_download_concurrency_from_the_environment_loads_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen: INAT_DOWNLOAD_CONCURRENCY set made every definition load fail (a bound checked against
    # the EnvVar placeholder, not the value).
    monkeypatch.setenv("INAT_DOWNLOAD_CONCURRENCY", "2")
    resource = PhotoDownloaderResource.from_env()
    with build_resources({"downloader": resource}) as built:
        assert built.downloader.download_config(retries=0, try_other_host=False, processes=1).concurrency == 2
    monkeypatch.setenv("INAT_DOWNLOAD_CONCURRENCY", "0")
    with build_resources({"downloader": PhotoDownloaderResource.from_env()}) as built, \
            pytest.raises(DownloadError, match="INAT_DOWNLOAD_CONCURRENCY is 0"):
        built.downloader.download_config(retries=0, try_other_host=False, processes=1)
