"""The Dagster instance of a data directory: where run history, partitions and schedules live.

Dagster keeps batch keys (dynamic partitions), runs and materializations in ``DAGSTER_HOME``. When
it is unset, every `dagster` command uses a throwaway instance, so a `fetch_parquet` run's batch
keys are gone before the `--partition batch-...` run that needs them. inat-assets therefore gives
each data directory its own instance folder, ``$INAT_DATA_DIR/dagster_home`` (run history belongs
to the data it describes), created with the packaged ``dagster.yaml``:

- `inat-assets` commands call `ensure_dagster_home()` themselves;
- plain `dagster`/`dg` commands get it from ``eval "$(inat-assets env)"`` (prints the export line).

An explicit ``DAGSTER_HOME`` always wins; a ``dagster.yaml`` already in it is left as it is. When
INAT_DATA_DIR is an object store, the instance cannot live there (SQLite needs a local file): then
DAGSTER_HOME must be set, and every command that needs the instance says so.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

from dagster import DagsterInstance

from inat_assets.errors import StorageError
from inat_assets.resources import DataStoreResource
from inat_assets.storage import DataStore, atomic_write_bytes

INSTANCE_FOLDER = "dagster_home"
DOWNLOAD_POOL = "inat_downloads"  # the pool of every image batch asset (pool= in its @asset)
# INAT_DATA_DIR unset means the store resource's default (./data), for commands outside Dagster too.
_DEFAULT_DATA_DIR: str = DataStoreResource.model_fields["data_dir"].default


def packaged_dagster_yaml() -> bytes:
    """The instance configuration shipped with inat-assets (inat_assets/instance/dagster.yaml)."""
    return (files("inat_assets.instance") / "dagster.yaml").read_bytes()


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


def ensure_dagster_home(path: Path | str | None = None) -> Path:
    """Create the instance folder (default: `default_dagster_home()`) with the packaged dagster.yaml if missing.

    Returns the absolute folder; does not change the environment (see `use_dagster_home`).
    """
    home = Path(path).expanduser().resolve() if path is not None else default_dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        atomic_write_bytes(config, packaged_dagster_yaml())
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


def open_instance(path: Path | str | None = None) -> DagsterInstance:
    """The instance in `ensure_dagster_home(path)` (its dagster.yaml applies)."""
    return DagsterInstance.from_config(str(ensure_dagster_home(path)))


def export_line(home: Path) -> str:
    """The shell line that points plain `dagster` commands at ``home``."""
    return f"export DAGSTER_HOME={shlex.quote(str(home))}"
