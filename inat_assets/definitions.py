"""The one Definitions object: assets, checks, jobs and resources of inat-assets."""

from dagster import AssetSelection, Definitions, define_asset_job
from dagster_duckdb import DuckDBResource

from inat_assets.assets.archive import dwca_archive
from inat_assets.assets.fetch_list import fetch_parquet, unique_photo_ids_with_http_urls
from inat_assets.assets.images import image_batches
from inat_assets.assets.tables import (
    media_parquet,
    media_reject_share,
    observations_parquet,
    observations_reject_share,
    unique_observation_ids,
)
from inat_assets.automation import (
    archive_automation_sensor,
    archive_check_schedule,
    automate_archive_chain,
    batch_fill_sensor,
    dwca_source,
    dwca_source_observation_job,
)
from inat_assets.resources import settings_from_env

fetch_list_job = define_asset_job(
    "fetch_list_job",
    # dwca_source is observed in the same run, so automation knows which archive version the tables came from.
    selection=AssetSelection.keys(dwca_source.key)
    | AssetSelection.assets(dwca_archive, observations_parquet, media_parquet, fetch_parquet),
    description="Observe the archive source -> archive -> observations/media Parquet -> fetch.parquet.",
)

image_batches_job = define_asset_job(
    "image_batches_job",
    selection=AssetSelection.assets(image_batches),
    description="Download one image batch (a photo-id range of fetch.parquet); backfill it for all.",
)

defs = Definitions(
    assets=[
        dwca_source,
        *automate_archive_chain(dwca_archive, [observations_parquet, media_parquet, fetch_parquet]),
        image_batches,
    ],
    asset_checks=[
        observations_reject_share,
        media_reject_share,
        unique_observation_ids,
        unique_photo_ids_with_http_urls,
    ],
    jobs=[fetch_list_job, image_batches_job, dwca_source_observation_job],
    schedules=[archive_check_schedule()],
    sensors=[archive_automation_sensor(), batch_fill_sensor(image_batches, "images")],
    resources={
        "settings": settings_from_env(),
        # An in-memory database: every table lives in Parquet files, DuckDB is only the engine.
        "duckdb": DuckDBResource(database=":memory:"),
    },
)
