from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from inat_assets.training import TrainingDatasetResult, TrainingOptions, build_training_dataset
from inat_assets_tests.training.world import World, make_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("training-world"))


def build(
    world: World, out: Path, options: dict | None = None, batches: list[str] | None = None, *, plots: bool = False
) -> TrainingDatasetResult:
    with duckdb.connect() as con:
        return build_training_dataset(
            con,
            TrainingOptions.model_validate(options or {}),
            world.fetch,
            world.observations,
            world.manifests(batches) if batches else world.manifests_dir,
            out,
            {"archive date": "2026-11-20", "ETag": '"abc"'},
            selection={"kingdom": ["Plantae"], "photo_size": "original"},
            plots=plots,
        )


def index_rows(result: TrainingDatasetResult) -> list[dict]:
    return pq.read_table(result.index).to_pylist()
