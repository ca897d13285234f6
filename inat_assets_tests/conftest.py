"""Shared fixtures: sample archives (generated once per session) and a helper that runs the graph."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import ExecuteInProcessResult, materialize
from dagster_duckdb import DuckDBResource

from inat_assets import definitions
from inat_assets.resources import InatSettings
from inat_assets.testing.sample import (
    SampleArchiveInfo,
    SampleSpec,
    archive_from_observations_csv,
    write_sample_archive,
)

FIXTURES = Path(__file__).parent / "fixtures"
REAL_OBSERVATIONS = FIXTURES / "real_observations_2022.csv"

TABLE_ASSETS = [definitions.dwca_archive, definitions.observations_parquet, definitions.media_parquet]
ALL_CHECKS = [
    definitions.observations_reject_share,
    definitions.media_reject_share,
    definitions.unique_observation_ids,
    definitions.unique_photo_ids_with_http_urls,
]


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


def settings_for(archive: Path | str, data_dir: Path, **overrides: Any) -> InatSettings:
    return InatSettings(data_dir=str(data_dir), dwca_source=str(archive), **overrides)


def run_graph(
    archive: Path | str,
    data_dir: Path,
    *,
    fetch_config: Mapping[str, Any] | None = None,
    with_fetch: bool = True,
    raise_on_error: bool = True,
    **settings: Any,
) -> ExecuteInProcessResult:
    """Materialize archive -> tables (-> fetch list) with every asset check, in process."""
    assets = [*TABLE_ASSETS, definitions.fetch_parquet] if with_fetch else TABLE_ASSETS
    checks = ALL_CHECKS if with_fetch else ALL_CHECKS[:3]
    run_config = {"ops": {"fetch_parquet": {"config": dict(fetch_config)}}} if fetch_config and with_fetch else None
    return materialize(
        [*assets, *checks],
        resources={"settings": settings_for(archive, data_dir, **settings), "duckdb": DuckDBResource(database=":memory:")},
        run_config=run_config,
        raise_on_error=raise_on_error,
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
