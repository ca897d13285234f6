"""The Dagster instance of a data directory: where run history, partitions and schedules live.

Dagster keeps batch keys (dynamic partitions), runs and materializations in ``DAGSTER_HOME``. When
it is unset, every `dagster` command uses a throwaway instance, so a `fetch_parquet` run's batch
keys are gone before the `--partition batch-...` run that needs them. inat-assets therefore gives
each data directory its own instance folder, ``$INAT_DATA_DIR/dagster_home`` (run history belongs
to the data it describes), created with the packaged ``dagster.yaml``:

- `inat-assets` commands call `ensure_dagster_home()` themselves;
- plain `dagster`/`dg` commands get it from ``eval "$(inat-assets env)"`` (prints the export line).

An explicit ``DAGSTER_HOME`` always wins; a ``dagster.yaml`` already in it is left as it is, with
one exception: the packaged SQLite variant is replaced by the PostgreSQL one when
``INAT_DAGSTER_POSTGRES_URL`` is set (moving an instance to PostgreSQL; its SQLite history stays in
the folder and is not copied). Going back is never automatic: with the PostgreSQL variant in place
and the variable unset, the instance refuses to load and says so.

Storage: SQLite files in ``DAGSTER_HOME`` (``dagster.yaml``), or PostgreSQL
(``dagster-postgres.yaml``, when ``INAT_DAGSTER_POSTGRES_URL`` names the database) for an instance
that several machines share. The downloads' shared host budget lives beside it
(``host_budget_url``): in the same PostgreSQL database, or in ``DAGSTER_HOME/host_budget.sqlite``.
When INAT_DATA_DIR is an object store, the instance cannot live there (SQLite needs a local file):
then DAGSTER_HOME must be set, and every command that needs the instance says so.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

from dagster import DagsterInstance

from inat_assets.download.host_budget import sqlite_url
from inat_assets.errors import InatAssetsError, StorageError
from inat_assets.resources import DataStoreResource
from inat_assets.storage import DataStore, atomic_write_bytes

INSTANCE_FOLDER = "dagster_home"
DOWNLOAD_POOL = "inat_downloads"  # the pool of every image batch asset (pool= in its @asset)
# INAT_DATA_DIR unset means the store resource's default (./data), for commands outside Dagster too.
_DEFAULT_DATA_DIR: str = DataStoreResource.model_fields["data_dir"].default


POSTGRES_URL_ENV = "INAT_DAGSTER_POSTGRES_URL"  # set: the instance is on PostgreSQL (dagster-postgres.yaml)
HOST_BUDGET_FILE = "host_budget.sqlite"  # the shared host budget of a SQLite instance, in DAGSTER_HOME
_SQLITE_YAML, _POSTGRES_YAML = "dagster.yaml", "dagster-postgres.yaml"
_POSTGRES_SCHEME = "postgresql+psycopg2://"


class InstanceConfigError(InatAssetsError, RuntimeError):
    """A DAGSTER_HOME whose configuration cannot be used as it is; the message says what to set."""


def packaged_dagster_yaml(environ: Mapping[str, str] | None = None) -> bytes:
    """The instance configuration shipped with inat-assets: inat_assets/instance/dagster.yaml, or
    dagster-postgres.yaml when ``INAT_DAGSTER_POSTGRES_URL`` is set in ``environ`` (default os.environ)."""
    environ = os.environ if environ is None else environ
    return _packaged(_POSTGRES_YAML if environ.get(POSTGRES_URL_ENV) else _SQLITE_YAML)


def _packaged(name: str) -> bytes:
    return (files("inat_assets.instance") / name).read_bytes()


def data_store_from_env(environ: Mapping[str, str] | None = None) -> DataStore:
    """The data directory named by INAT_DATA_DIR (default ./data), for commands that run outside Dagster."""
    environ = os.environ if environ is None else environ
    return DataStore.from_setting(environ.get("INAT_DATA_DIR") or _DEFAULT_DATA_DIR, environ.get("INAT_SCRATCH_DIR", ""))


def default_dagster_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$DAGSTER_HOME`` if set, else ``<INAT_DATA_DIR or ./data>/dagster_home``, as an absolute path."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("DAGSTER_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    store = data_store_from_env(environ)
    if store.is_remote:
        raise StorageError(
            f"INAT_DATA_DIR={store.url} is an object store, where Dagster's instance (SQLite files) cannot live: "
            "set DAGSTER_HOME to a local folder (`export DAGSTER_HOME=$PWD/dagster_home`), or to the folder of a "
            "dagster.yaml that keeps the instance in Postgres when several machines share the data directory."
        )
    return store.path(INSTANCE_FOLDER)  # type: ignore[return-value]


def check_postgres_url(environ: Mapping[str, str]) -> None:
    """Refuse an INAT_DAGSTER_POSTGRES_URL Dagster cannot use, before any process opens the instance.

    dagster-postgres runs on psycopg2, and SQLAlchemy 2.1 opens a bare ``postgresql://`` URL with
    psycopg 3 instead: seen here, the daemon then failed on every ``NOTIFY`` (psycopg 3 binds
    parameters on the server) or, without psycopg 3, on "No module named 'psycopg'". So the URL
    names the driver.
    """
    url = environ.get(POSTGRES_URL_ENV, "")
    if url and not url.startswith(_POSTGRES_SCHEME):
        scheme = url.partition("://")[0] if "://" in url else "no scheme"
        raise InstanceConfigError(
            f"{POSTGRES_URL_ENV} starts with {scheme!r}: write it as {_POSTGRES_SCHEME}user:password@host:5432/database "
            "(Dagster's PostgreSQL storage runs on the psycopg2 driver, and SQLAlchemy 2.1 would pick another "
            "for a bare postgresql:// URL)."
        )


def ensure_dagster_home(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Create the instance folder (default: `default_dagster_home()`) with the packaged dagster.yaml if missing
    (the PostgreSQL variant when ``INAT_DAGSTER_POSTGRES_URL`` is set; see the module docstring).

    Returns the absolute folder; does not change the environment (see `use_dagster_home`).
    """
    environ = os.environ if environ is None else environ
    check_postgres_url(environ)
    home = Path(path).expanduser().resolve() if path is not None else default_dagster_home(environ)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    wanted = packaged_dagster_yaml(environ)
    current = config.read_bytes() if config.exists() else None
    if current is None or (current == _packaged(_SQLITE_YAML) and current != wanted):
        atomic_write_bytes(config, wanted)
    elif current == _packaged(_POSTGRES_YAML) and not environ.get(POSTGRES_URL_ENV):
        raise InstanceConfigError(
            f"the Dagster instance in {home} is on PostgreSQL (its dagster.yaml is inat-assets' PostgreSQL "
            f"variant), but {POSTGRES_URL_ENV} is not set: export {POSTGRES_URL_ENV}="
            f"{_POSTGRES_SCHEME}user:password@host:5432/database (the same for every process of the instance)."
        )
    instance = DagsterInstance.from_config(str(home))
    try:
        # The queue counts a pool only once it has a row in the instance; until the first download step
        # creates it, the run queue let two batch runs start at once under the default limit of 1
        # (seen with `dagster-daemon run`). Creating it here applies the default limit from the start;
        # a limit set by hand (`dagster instance concurrency set`) is left alone.
        storage = instance.event_log_storage
        if DOWNLOAD_POOL not in storage.get_concurrency_keys():
            storage.initialize_concurrency_limit_to_default(DOWNLOAD_POOL)
    finally:
        instance.dispose()
    return home


def use_dagster_home(path: Path | str | None = None) -> Path:
    """`ensure_dagster_home` and export it as DAGSTER_HOME for this process and its children."""
    home = ensure_dagster_home(path)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def host_budget_url(instance: DagsterInstance) -> str:
    """Where the downloads of ``instance`` share their per-host budgets (a ``host_budget`` ledger URL).

    The instance's own PostgreSQL database when its storage is PostgreSQL (every machine of the
    instance reaches it), else ``host_budget.sqlite`` in its root folder (``DAGSTER_HOME``): every
    process on this machine that uses the instance shares that file.
    """
    postgres_url = getattr(instance.run_storage, "postgres_url", None)
    if postgres_url:
        return str(postgres_url)
    return sqlite_url(Path(instance.root_directory) / HOST_BUDGET_FILE)


def open_instance(path: Path | str | None = None) -> DagsterInstance:
    """The instance in `ensure_dagster_home(path)` (its dagster.yaml applies)."""
    return DagsterInstance.from_config(str(ensure_dagster_home(path)))


def export_line(home: Path) -> str:
    """The shell line that points plain `dagster` commands at ``home``."""
    return f"export DAGSTER_HOME={shlex.quote(str(home))}"
