"""The resources every asset gets: ready objects, not a bag of settings.

- ``store`` (DataStoreResource): where outputs go and how image batches are laid out.
- ``dwca`` (DwcaResource): where the Darwin Core Archive comes from and how its CSVs are read.
- ``duckdb`` (InatDuckDBResource): DuckDB connections with the memory cap, threads and spill folder
  already applied, so no asset or check can forget them.
- ``downloader`` (PhotoDownloaderResource): download settings (hosts, contact, concurrency) and
  the photo mirror, handed out as a ready DownloadConfig and routed tasks; the per-host budgets in
  it are the Dagster instance's shared ledger, so every batch run on the instance draws on one.

Every field is read from the environment variable ``INAT_`` + FIELD.upper() (``data_dir`` ->
``INAT_DATA_DIR``): the field list is the one list of settings. Only variables that are set are
passed as EnvVar, so the Dagster UI shows where a value came from and unset ones keep the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import duckdb
from dagster import ConfigurableResource, EnvVar, InitResourceContext
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from inat_assets.download import INAT_PHOTO_HOSTS, DownloadConfig, PhotoTask
from inat_assets.dwca.convert import DEFAULT_MEMORY_LIMIT, configure_duckdb
from inat_assets.errors import ArchiveError, DownloadError
from inat_assets.storage import DataStore

OFFICIAL_DWCA_URL = "https://www.inaturalist.org/observations/gbif-observations-dwca.zip"
ENV_PREFIX = "INAT_"


def env_var(field: str) -> str:
    """The environment variable of a settings field: ``data_dir`` -> ``INAT_DATA_DIR``."""
    return ENV_PREFIX + field.upper()


class _SettingsFromEnv(ConfigurableResource):
    """Base of the resources whose own fields are user settings read from INAT_* variables."""

    # Fields inherited from a library base class (DuckDBResource's database, ...) are not settings.
    _NOT_SETTINGS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def setting_fields(cls) -> list[str]:
        return [
            name
            for name, info in cls.model_fields.items()
            if name not in cls._NOT_SETTINGS and info.annotation in (str, int)
        ]

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Any:
        """The resource with an EnvVar for every setting whose variable is set; ``overrides`` win."""
        environ = dict(os.environ) if environ is None else environ
        kwargs: dict[str, Any] = {}
        for name in cls.setting_fields():
            var = env_var(name)
            if environ.get(var):
                kwargs[name] = EnvVar.int(var) if cls.model_fields[name].annotation is int else EnvVar(var)
        return cls(**{**kwargs, **overrides})


class DataStoreResource(_SettingsFromEnv):
    """The data directory and its layout (paths and atomic writes live in inat_assets.storage)."""

    data_dir: str = Field(
        default="./data",
        description=(
            "Folder for every output, or an object store such as s3://bucket/prefix (credentials and endpoint "
            "from the AWS_* variables) (INAT_DATA_DIR)."
        ),
    )
    scratch_dir: str = Field(
        default="",
        description=(
            "Local working space: DuckDB spill files, FIFOs, staged uploads, lock files. Empty = "
            "<data_dir>/tmp for a local data dir, a folder under the system's temp folder for a store (INAT_SCRATCH_DIR)."
        ),
    )
    batch_span: int = Field(
        default=0,
        ge=0,
        description=(
            "Photo ids per image batch; 0 = sized for about 500k photos. Fixed at the first fetch list "
            "of any dataset (kept in <data_dir>/batches.json) and shared by all datasets (INAT_BATCH_SPAN)."
        ),
    )

    def get(self) -> DataStore:
        return DataStore.from_setting(self.data_dir, self.scratch_dir)


class DwcaResource(_SettingsFromEnv):
    """Where the Darwin Core Archive comes from and how its CSV members are read."""

    # No default: the real archive is 25 GB, so downloading it is an explicit choice (a first click on
    # "Materialize all" in a fresh UI must not start it); `inat-assets ui --demo` sets the bundled sample.
    dwca_source: str = Field(
        default="",
        description=(
            f"The archive: a local path (used in place) or an http(s) URL such as {OFFICIAL_DWCA_URL} "
            "(INAT_DWCA_SOURCE; required)."
        ),
    )
    csv_read_mode: str = Field(
        default="auto",
        description=(
            "'stream' pipes each CSV member out of the zip into DuckDB in chunks that DuckDB reads on "
            "all threads while the rest inflates (no disk for the CSV); 'extract' inflates it to the "
            "scratch folder first (needs the member's size free; slower); 'auto' streams (INAT_CSV_READ_MODE)."
        ),
    )

    def source(self) -> str:
        """INAT_DWCA_SOURCE, or an ArchiveError saying how to choose one."""
        if not self.dwca_source.strip():
            raise ArchiveError(
                "INAT_DWCA_SOURCE is not set: choose the archive explicitly, e.g. "
                f"`export INAT_DWCA_SOURCE={OFFICIAL_DWCA_URL}` (about 25 GB, downloaded to INAT_DATA_DIR/archive/) "
                "or the path of a copy you have; `inat-assets ui --demo` runs on the bundled sample instead."
            )
        return self.dwca_source

    @property
    def read_mode(self) -> Literal["auto", "stream", "extract"]:
        return self.csv_read_mode  # type: ignore[return-value]


class InatDuckDBResource(DuckDBResource, _SettingsFromEnv):
    """DuckDBResource whose connections come with the memory cap, threads and spill folder applied."""

    _NOT_SETTINGS: ClassVar[frozenset[str]] = frozenset(DuckDBResource.model_fields)

    # An in-memory database: every table lives in Parquet files, DuckDB is only the engine.
    database: str = Field(default=":memory:", description="DuckDB database; in-memory by default.")
    store: DataStoreResource = Field(description="The data store, for the default spill folder.")
    duckdb_memory_limit: str = Field(
        default=DEFAULT_MEMORY_LIMIT,
        description="DuckDB's memory_limit; larger work spills to the temp dir (INAT_DUCKDB_MEMORY_LIMIT).",
    )
    duckdb_threads: int = Field(
        default=0, ge=0, description="DuckDB worker threads; 0 = one per core (INAT_DUCKDB_THREADS)."
    )
    duckdb_temp_dir: str = Field(
        default="", description="DuckDB spill folder; empty = <data_dir>/tmp/duckdb (INAT_DUCKDB_TEMP_DIR)."
    )

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        store = self.store.get()
        temp_dir = Path(self.duckdb_temp_dir) if self.duckdb_temp_dir else store.scratch_dir("duckdb")
        with super().get_connection() as con:
            configure_duckdb(con, memory_limit=self.duckdb_memory_limit, threads=self.duckdb_threads, temp_dir=temp_dir)
            # Reads Parquet on an object store through fsspec (DuckDB's httpfs would be downloaded at run time).
            yield store.register(con)


class PhotoDownloaderResource(_SettingsFromEnv):
    """How photos are fetched: allowed hosts, politeness contact, concurrency and an optional mirror."""

    contact: str = Field(default="", description="E-mail or URL added to the User-Agent (INAT_CONTACT).")
    allowed_hosts: str = Field(
        default="",
        description="Comma-separated hosts that may be fetched; empty = the two iNaturalist photo hosts (INAT_ALLOWED_HOSTS).",
    )
    # No ge=1 here: pydantic would check it against the EnvVar placeholder (0) when the variable is
    # set, and every definition load failed; download_config checks the resolved value instead.
    download_concurrency: int = Field(
        default=DownloadConfig.concurrency, description="Requests in flight per batch (INAT_DOWNLOAD_CONCURRENCY)."
    )
    photo_mirror: str = Field(
        default="",
        description=(
            "Base URL of a mirror serving the same /photos/<id>/<size>.<ext> paths; iNaturalist photo URLs "
            "are fetched from it instead (the demo's local server uses this) (INAT_PHOTO_MIRROR)."
        ),
    )

    host_budget: str = Field(
        default="",
        description=(
            "Where every download's per-host budgets (requests/s, bytes per hour and day) are shared: empty = "
            "the Dagster instance's (its PostgreSQL database, or DAGSTER_HOME/host_budget.sqlite); or a ledger "
            "URL, sqlite:////abs/file.db or postgresql://..., to share one budget between instances on one IP "
            "(INAT_HOST_BUDGET)."
        ),
    )
    # The instance's ledger, found when a run sets the resource up (see setup_for_execution).
    _instance_budget: str = PrivateAttr(default="")

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if not self.host_budget and context.instance is not None:
            # Imported here: inat_assets.instance imports this module (the data dir's default).
            from inat_assets.instance import host_budget_url

            self._instance_budget = host_budget_url(context.instance)

    @property
    def shared_budget(self) -> str:
        """The ledger URL handed to the engine: the setting, else the instance's ("" outside a run)."""
        return self.host_budget or self._instance_budget

    def download_config(self, *, retries: int, try_other_host: bool, processes: int | None = None) -> DownloadConfig:
        if self.download_concurrency < 1:
            raise DownloadError(
                f"INAT_DOWNLOAD_CONCURRENCY is {self.download_concurrency}: requests in flight per batch must be 1 or more"
            )
        hosts = tuple(h.strip() for h in self.allowed_hosts.split(",") if h.strip()) or INAT_PHOTO_HOSTS
        if self.photo_mirror:
            # host:port when the mirror names a port: a bare host would allow only ports 80 and 443.
            hosts = (*hosts, urlsplit(self.photo_mirror).netloc.rpartition("@")[2])
        return DownloadConfig(
            concurrency=self.download_concurrency,
            allowed_hosts=hosts,
            contact=self.contact,
            retries=retries,
            try_other_host=try_other_host,
            processes=processes,
            host_budget=self.shared_budget,
        )

    def route(self, task: PhotoTask) -> PhotoTask:
        """Point an iNaturalist photo URL at the mirror (same path, mirror's scheme and host)."""
        parts = urlsplit(task.url)
        if not self.photo_mirror or parts.hostname not in INAT_PHOTO_HOSTS:
            return task
        return PhotoTask(task.photo_id, self.photo_mirror.rstrip("/") + parts.path)

    def routed(self, tasks: Iterable[PhotoTask]) -> Iterator[PhotoTask]:
        return (self.route(task) for task in tasks)


SETTINGS_RESOURCES: dict[str, type[_SettingsFromEnv]] = {
    "store": DataStoreResource,
    "dwca": DwcaResource,
    "duckdb": InatDuckDBResource,
    "downloader": PhotoDownloaderResource,
}


def inat_resources(*, environ: dict[str, str] | None = None, **settings: Any) -> dict[str, ConfigurableResource]:
    """The four resources, each field from ``settings`` when given, else from its INAT_* variable.

    ``environ={}`` ignores the process environment (tests, the demo). A setting no resource has is
    an error, so a misspelt name cannot be silently ignored.
    """
    unknown = set(settings) - {f for cls in SETTINGS_RESOURCES.values() for f in cls.setting_fields()}
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")

    def own(cls: type[_SettingsFromEnv]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k in cls.setting_fields()}

    store = DataStoreResource.from_env(environ, **own(DataStoreResource))
    return {
        "store": store,
        "dwca": DwcaResource.from_env(environ, **own(DwcaResource)),
        "duckdb": InatDuckDBResource.from_env(environ, store=store, **own(InatDuckDBResource)),
        "downloader": PhotoDownloaderResource.from_env(environ, **own(PhotoDownloaderResource)),
    }

