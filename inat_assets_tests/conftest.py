"""Shared fixtures: sample archives (generated once per session) and a helper that runs the graph."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import (
    AssetChecksDefinition,
    AssetsDefinition,
    DagsterInstance,
    ExecuteInProcessResult,
    RetryPolicy,
    materialize,
)

from inat_assets import definitions
from inat_assets.components import InatDataset, dataset_definitions
from inat_assets.resources import inat_resources
from inat_assets.testing.sample import (
    SampleArchiveInfo,
    SampleSpec,
    archive_from_observations_csv,
    write_sample_archive,
)
from inat_assets_tests.postgres_server import PostgresServer, postgres_server

FIXTURES = Path(__file__).parent / "fixtures"
REAL_OBSERVATIONS = FIXTURES / "real_observations_2022.csv"

TABLE_ASSETS = [definitions.dwca_archive, definitions.observations_parquet, definitions.media_parquet]
TABLE_CHECKS = [definitions.observations_reject_share, definitions.media_reject_share, definitions.unique_observation_ids]
# The test datasets keep the seed's default when a test gives no kingdom.
DEFAULT_FILTERS: dict[str, Any] = {"kingdom": ["Plantae"]}


@pytest.fixture(scope="session")
def sample_48(tmp_path_factory: pytest.TempPathFactory) -> SampleArchiveInfo:
    return write_sample_archive(tmp_path_factory.mktemp("s48") / "dwca.zip", SampleSpec(observations=400, layout="48", seed=7))


@pytest.fixture(scope="session")
def sample_45(tmp_path_factory: pytest.TempPathFactory) -> SampleArchiveInfo:
    spec = SampleSpec(observations=250, layout="45", seed=3, extra_columns=("county", "publicLatitude"))
    return write_sample_archive(tmp_path_factory.mktemp("s45") / "dwca.zip", spec)


@pytest.fixture(scope="session")
def real_archive(tmp_path_factory: pytest.TempPathFactory) -> SampleArchiveInfo:
    return archive_from_observations_csv(REAL_OBSERVATIONS, tmp_path_factory.mktemp("real") / "dwca.zip", seed=1)


def settings_for(archive: Path | str, data_dir: Path, **settings: Any) -> dict[str, Any]:
    """The four resources for a test: nothing from the environment, only what is given here."""
    return inat_resources(environ={}, data_dir=str(data_dir), dwca_source=str(archive), **settings)


def dataset(name: str = "plants", **declaration: Any) -> InatDataset:
    return InatDataset(name=name, **{**DEFAULT_FILTERS, **declaration})


@dataclass(frozen=True)
class DatasetAssets:
    fetch_parquet: AssetsDefinition
    image_batches: AssetsDefinition
    check: AssetChecksDefinition
    partitions: str
    training_dataset: AssetsDefinition


def dataset_assets(declared: InatDataset, retry_policy: RetryPolicy | None = None) -> DatasetAssets:
    built = dataset_definitions(declared, retry_policy)
    by_name = {a.key.path[-1]: a for a in built.assets or []}  # type: ignore[union-attr]
    (check,) = built.asset_checks or []
    return DatasetAssets(
        by_name["fetch_parquet"], by_name["image_batches"], check, f"{declared.name}_image_batches", by_name["training_dataset"]
    )  # type: ignore[arg-type]


def fetch_path(data_dir: Path, name: str = "plants") -> Path:
    return data_dir / "datasets" / name / "fetch.parquet"


def run_graph(
    archive: Path | str,
    data_dir: Path,
    *,
    fetch_config: Mapping[str, Any] | None = None,
    with_fetch: bool = True,
    raise_on_error: bool = True,
    name: str = "plants",
    instance: DagsterInstance | None = None,
    **settings: Any,
) -> ExecuteInProcessResult:
    """Materialize archive -> tables (-> the dataset's fetch list) with every asset check, in process."""
    selected: list[Any] = [*TABLE_ASSETS, *TABLE_CHECKS]
    if with_fetch:
        built = dataset_assets(dataset(name, **dict(fetch_config or {})))
        selected += [built.fetch_parquet, built.check]
    return materialize(
        selected,
        resources=settings_for(archive, data_dir, **settings),
        raise_on_error=raise_on_error,
        instance=instance,
    )


def metadata(result: ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    assert events, f"{asset} was not materialized"
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()}


def checks(result: ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}


def query(sql: str, *params: object) -> list[tuple[Any, ...]]:
    with duckdb.connect() as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def copy_to(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (see postgres_server.py: skipped outside CI without it)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return postgres.create_database()
