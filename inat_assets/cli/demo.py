"""`inat-assets demo`: the whole graph on the bundled sample, offline, against a local photo mirror.

It materializes dwca_archive -> observations/media tables -> fetch.parquet -> every image batch in
a temporary Dagster instance, with the photos served by `inat_assets.testing.mirror` on 127.0.0.1 (a few
of them answer 503 or 429 first, and one 404s, so retries and permanent failures show up in the
manifests), then prints what was produced and where.
"""

from __future__ import annotations

import os
import tempfile
import time
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import duckdb
from dagster import AssetsDefinition, DagsterInstance, ExecuteInProcessResult, materialize
from dagster_duckdb import DuckDBResource

from inat_assets import definitions
from inat_assets.dwca.convert import sql_string
from inat_assets.resources import InatSettings
from inat_assets.testing.mirror import serve_mirror

_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
_TABLE_CHAIN = [
    definitions.dwca_archive,
    definitions.observations_parquet,
    definitions.media_parquet,
    definitions.fetch_parquet,
    definitions.observations_reject_share,
    definitions.media_reject_share,
    definitions.unique_observation_ids,
    definitions.unique_photo_ids_with_http_urls,
]


def _sample_archive() -> Any:
    return as_file(files("inat_assets") / "sample_data" / "sample-dwca.zip")


def _demo_faults(fetch_list: Path) -> dict[int, list[str]]:
    """A few photos that fail first (retried) and one that is gone (recorded as a permanent failure)."""
    with duckdb.connect() as con:
        ids = [r[0] for r in con.execute(f"SELECT photo_id FROM read_parquet({sql_string(fetch_list)}) LIMIT 4").fetchall()]
    plan = [["503", "ok"], ["429:1", "ok"], ["reset", "ok"], ["404"]]
    return {photo_id: behaviours for photo_id, behaviours in zip(ids, plan, strict=False)}


def _run(
    assets: list[AssetsDefinition | Any], instance: DagsterInstance, resources: dict, **kwargs: Any
) -> ExecuteInProcessResult:
    result = materialize(assets, instance=instance, resources=resources, raise_on_error=False, **kwargs)
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        reason = failures[0].event_specific_data.error.message if failures else "see the log above"  # type: ignore[union-attr]
        raise SystemExit(f"demo failed: {reason}")
    return result


def run_demo(data_dir: Path) -> int:
    started = time.monotonic()
    print(f"inat-assets demo: writing to {data_dir}")
    with _sample_archive() as sample, serve_mirror(("127.0.0.1",)) as mirror, tempfile.TemporaryDirectory() as home:
        settings = InatSettings(
            data_dir=str(data_dir),
            dwca_source=str(sample),
            photo_mirror=mirror.base_url(),
            allowed_hosts="127.0.0.1",
            download_concurrency=16,
            batch_span=500,  # sized for the bundled sample: its ~190 plant photos fall into four batches
        )
        resources = {"settings": settings, "duckdb": DuckDBResource(database=":memory:")}
        instance = DagsterInstance.local_temp(tempdir=home, overrides={"telemetry": {"enabled": False}})
        print(f"1/2 archive -> tables -> fetch list (sample: {sample.name})")
        tables = _run(_TABLE_CHAIN, instance, resources, run_config=_QUIET)
        checks = {
            f"{e.asset_key.to_user_string()} {e.check_name}": e.passed for e in tables.get_asset_check_evaluations()
        }
        store = settings.store()
        mirror.set_faults(_demo_faults(store.path("fetch.parquet")))
        keys = instance.get_dynamic_partitions("image_batches")
        print(f"2/2 image batches: {len(keys)} partitions, photos served by a local mirror at {mirror.base_url()}")
        for key in keys:
            _run([definitions.image_batches], instance, resources, partition_key=key, run_config=_QUIET)
            print(f"    {key} done")
        _print_summary(store.root, checks, time.monotonic() - started)
    return 0


def _print_summary(root: Path, checks: dict[str, bool], seconds: float) -> None:
    with duckdb.connect() as con:

        def one(sql: str) -> Any:
            return con.execute(sql).fetchone()[0]  # type: ignore[index]

        observations = one(f"SELECT count(*) FROM {sql_string(root / 'observations.parquet')}")
        media = one(f"SELECT count(*) FROM {sql_string(root / 'media.parquet')}")
        rejects = one(f"SELECT count(*) FROM read_parquet({sql_string(str(root / 'rejects' / '*.parquet'))})")
        photos = one(f"SELECT count(*) FROM {sql_string(root / 'fetch.parquet')}")
        statuses = con.execute(
            f"SELECT status, count(*), sum(bytes) FROM read_parquet({sql_string(str(root / 'manifests' / '*.parquet'))}) "
            "GROUP BY ALL ORDER BY 2 DESC"
        ).fetchall()
        errors = con.execute(
            f"SELECT photo_id, error FROM read_parquet({sql_string(str(root / 'manifests' / '*.parquet'))}) "
            "WHERE status LIKE 'failed%' ORDER BY photo_id"
        ).fetchall()
    print()
    print(f"observations.parquet  {observations:>8,} rows")
    print(f"media.parquet         {media:>8,} rows")
    print(f"rejects/*.parquet     {rejects:>8,} malformed lines set aside (the sample has some on purpose)")
    print(f"fetch.parquet         {photos:>8,} photos to fetch (kingdom Plantae)")
    for status, count, size in statuses:
        print(f"images: {status:17s}{count:>6,}  {int(size or 0) / 1e6:.1f} MB")
    for photo_id, error in errors:
        print(f"    photo {photo_id}: {error}")
    for name, passed in checks.items():
        note = " (expected: the sample's deliberate malformed lines exceed 0.1 %)" if "rejected" in name else ""
        print(f"check {name}: {'passed' if passed else 'failed'}{note if not passed else ''}")
    print(f"\nimages in {root / 'images'}, manifests in {root / 'manifests'}; {seconds:.1f} s in all")


def default_data_dir() -> Path:
    return Path(os.environ.get("INAT_DATA_DIR") or "demo-data").resolve()
