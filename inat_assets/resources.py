"""Settings shared by every asset, read from environment variables (see README, "Configuration")."""

import os
from pathlib import Path

import duckdb
from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from inat_assets.dwca.convert import DEFAULT_MEMORY_LIMIT, configure_duckdb
from inat_assets.storage import DataStore

OFFICIAL_DWCA_URL = "https://www.inaturalist.org/observations/gbif-observations-dwca.zip"

# Environment variable -> InatSettings field. Only variables that are set are passed as EnvVar, so
# the Dagster UI shows where a value came from and unset variables fall back to the defaults below.
ENV_SETTINGS: dict[str, str] = {
    "INAT_DATA_DIR": "data_dir",
    "INAT_DWCA_SOURCE": "dwca_source",
    "INAT_DUCKDB_MEMORY_LIMIT": "duckdb_memory_limit",
    "INAT_DUCKDB_THREADS": "duckdb_threads",
    "INAT_DUCKDB_TEMP_DIR": "duckdb_temp_dir",
    "INAT_CSV_READ_MODE": "csv_read_mode",
    "INAT_CONTACT": "contact",
    "INAT_ALLOWED_HOSTS": "allowed_hosts",
    "INAT_BATCH_SPAN": "batch_span",
    "INAT_DOWNLOAD_CONCURRENCY": "download_concurrency",
    "INAT_PHOTO_MIRROR": "photo_mirror",
}


_INT_FIELDS = {"duckdb_threads", "batch_span", "download_concurrency"}


class InatSettings(ConfigurableResource):
    """Where data goes, where the archive comes from, and how hard DuckDB and the downloader may work."""

    data_dir: str = Field(default="./data", description="INAT_DATA_DIR: folder for every output.")
    dwca_source: str = Field(
        default=OFFICIAL_DWCA_URL,
        description="INAT_DWCA_SOURCE: the archive, a local path (used in place) or an http(s) URL.",
    )
    duckdb_memory_limit: str = Field(
        default=DEFAULT_MEMORY_LIMIT,
        description="INAT_DUCKDB_MEMORY_LIMIT: DuckDB's memory_limit; larger work spills to the temp dir.",
    )
    duckdb_threads: int = Field(
        default=0, description="INAT_DUCKDB_THREADS: DuckDB worker threads; 0 = one per core."
    )
    duckdb_temp_dir: str = Field(
        default="",
        description="INAT_DUCKDB_TEMP_DIR: DuckDB spill folder; empty = <data_dir>/tmp/duckdb.",
    )
    csv_read_mode: str = Field(
        default="auto",
        description=(
            "INAT_CSV_READ_MODE: 'stream' pipes each CSV member out of the zip into DuckDB (no disk "
            "for the CSV); 'extract' inflates it to the scratch folder first so DuckDB reads it with "
            "all threads (needs the member's size free); 'auto' extracts when there is room, else streams."
        ),
    )
    contact: str = Field(
        default="",
        description="INAT_CONTACT: e-mail or URL added to the downloader's User-Agent.",
    )
    allowed_hosts: str = Field(
        default="",
        description=(
            "INAT_ALLOWED_HOSTS: comma-separated hosts the downloader may fetch from; "
            "empty = the two iNaturalist photo hosts."
        ),
    )
    batch_span: int = Field(
        default=0,
        description=(
            "INAT_BATCH_SPAN: photo ids per image batch; 0 = sized for about 50k photos. Fixed at the "
            "first fetch_parquet run (kept in <data_dir>/batches.json)."
        ),
    )
    download_concurrency: int = Field(
        default=64, description="INAT_DOWNLOAD_CONCURRENCY: requests in flight per batch."
    )
    photo_mirror: str = Field(
        default="",
        description=(
            "INAT_PHOTO_MIRROR: base URL of a mirror serving the same /photos/<id>/<size>.<ext> paths; "
            "iNaturalist photo URLs are fetched from it instead (the demo's local server uses this)."
        ),
    )

    def store(self) -> DataStore:
        return DataStore.from_setting(self.data_dir)

    def configure_duckdb(self, con: duckdb.DuckDBPyConnection) -> None:
        """Apply the memory, thread and spill settings to a connection from DuckDBResource."""
        temp_dir = Path(self.duckdb_temp_dir) if self.duckdb_temp_dir else self.store().scratch_dir("duckdb")
        configure_duckdb(con, memory_limit=self.duckdb_memory_limit, threads=self.duckdb_threads, temp_dir=temp_dir)


def settings_from_env() -> InatSettings:
    """InatSettings with an EnvVar for every INAT_* variable that is set in this environment."""
    kwargs = {
        field: EnvVar.int(var) if field in _INT_FIELDS else EnvVar(var)
        for var, field in ENV_SETTINGS.items()
        if os.environ.get(var)
    }
    return InatSettings(**kwargs)
