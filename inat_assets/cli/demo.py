"""`inat-assets demo`: the whole graph on the bundled sample, offline, against a local photo mirror.

It materializes dwca_archive -> observations/media tables -> the fetch list of every declared
dataset (the shipped ``plants`` and ``fungi_open``) -> every image batch of each -> the training
dataset of each (``datasets/<name>/training/``, with the exports its declaration asks for), in a temporary
Dagster instance, with the photos served by `inat_assets.testing.mirror` on 127.0.0.1 (a few of
them answer 503 or 429 first, and one 404s, so retries and permanent failures show up in the
manifests), then prints what each dataset got, where, and how to load its training dataset.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from importlib.resources import as_file, files
from typing import Any

from dagster import AssetKey, AssetsDefinition, DagsterInstance, ExecuteInProcessResult, materialize

from inat_assets.assets.archive import dwca_archive
from inat_assets.assets.images import batch_progress_observer
from inat_assets.assets.tables import (
    media_parquet,
    media_reject_share,
    observations_parquet,
    observations_reject_share,
    unique_observation_ids,
)
from inat_assets.cli.photos import declared_selections
from inat_assets.cli.progress import RunningTotal, progress_display
from inat_assets.dwca.convert import sql_string
from inat_assets.resources import inat_resources
from inat_assets.storage import DataStore, StorePath
from inat_assets.testing.mirror import serve_mirror
from inat_assets.training import summary_text

_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# The bundled sample has ~1 % malformed lines on purpose (0.99 % of observations, 0.38 % of media): the
# demo, like `inat-assets ui --demo`, sets the reject checks' soft limit to 2 % so a first run is green.
DEMO_MAX_REJECT_SHARE = 0.02
DEMO_DATA_DIR = "demo-data"  # the demo's outputs unless INAT_DATA_DIR says otherwise (`demo` and `ui --demo`)
_DEMO_CHECKS = {
    f"{table}_rejected_lines_under_share": {"config": {"max_reject_share": DEMO_MAX_REJECT_SHARE}}
    for table in ("observations_parquet", "media_parquet")
}
_TABLE_CHAIN = [
    dwca_archive,
    observations_parquet,
    media_parquet,
    observations_reject_share,
    media_reject_share,
    unique_observation_ids,
]


def _sample_archive() -> Any:
    return as_file(files("inat_assets") / "sample_data" / "sample-dwca.zip")


def _demo_faults(store: DataStore, fetch_list: StorePath) -> dict[int, list[str]]:
    """A few photos that fail first (retried) and one that is gone (recorded as a permanent failure)."""
    with store.connect() as con:
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


def _dataset_assets(defs: Any, name: str) -> tuple[AssetsDefinition, Any, AssetsDefinition, AssetsDefinition]:
    """(fetch_parquet, its checks, image_batches, training_dataset) of one declared dataset, from the Definitions."""
    fetch_key, images_key = AssetKey([name, "fetch_parquet"]), AssetKey([name, "image_batches"])
    # From the declared lists, not resolve_assets_def: those come bound to the environment's resources.
    assets = {a.key: a for a in defs.assets or [] if isinstance(a, AssetsDefinition) and a.keys}
    checks = [c for c in defs.asset_checks or [] if fetch_key in {k.asset_key for k in c.check_keys}]
    return assets[fetch_key], checks, assets[images_key], assets[AssetKey([name, "training_dataset"])]


@contextlib.contextmanager
def _showing_batches(store: DataStore, name: str, fetch_list: StorePath) -> Iterator[tuple[Callable[[str], None], dict]]:
    """How the batches of one dataset show: (a function for a line of text, the batch runs' config).

    On a terminal, one live bar over all of the dataset's batches, fed by the asset's progress
    (``batch_progress_observer``) at the bar's interval; elsewhere a line per finished batch.
    """
    display = progress_display(sys.stdout, description=name)
    if not display.is_bar:
        yield print, _QUIET
        return
    with store.connect() as con:
        photos = con.execute(f"SELECT count(*) FROM read_parquet({sql_string(fetch_list)})").fetchone()[0]  # type: ignore[index]
    op_config = {"config": {"progress_seconds": display.interval}}
    token = batch_progress_observer.set(RunningTotal(int(photos), display, time.monotonic))
    try:
        with display:
            yield display.message, {**_QUIET, "ops": {f"{name}__image_batches": op_config}}
    finally:
        batch_progress_observer.reset(token)


def run_demo(store: DataStore) -> int:
    from inat_assets.definitions import defs

    started = time.monotonic()
    store.check()  # an unreachable bucket fails here, saying what to set, not in the first asset
    print(f"inat-assets demo: writing to {store.url}")
    with _sample_archive() as sample, serve_mirror(("127.0.0.1",)) as mirror, tempfile.TemporaryDirectory() as home:
        resources = inat_resources(
            environ={},
            data_dir=store.url,
            scratch_dir=str(store.scratch_root or ""),
            dwca_source=str(sample),
            photo_mirror=mirror.base_url(),
            allowed_hosts="127.0.0.1",
            download_concurrency=16,
            batch_span=500,  # sized for the bundled sample: its ~190 plant photos fall into four batches
        )
        datasets = [s.dataset for s in declared_selections(defs, store)]
        instance = DagsterInstance.local_temp(tempdir=home, overrides={"telemetry": {"enabled": False}})
        print(f"1/3 archive -> tables -> fetch lists of {', '.join(datasets)} (sample: {sample.name})")
        chain: list[Any] = list(_TABLE_CHAIN)
        for name in datasets:
            fetch, checks, _, _ = _dataset_assets(defs, name)
            chain += [fetch, *checks]
        tables = _run(chain, instance, resources, run_config={**_QUIET, "ops": _DEMO_CHECKS})
        checks_passed = {
            f"{e.asset_key.to_user_string()} {e.check_name}": e.passed for e in tables.get_asset_check_evaluations()
        }
        if "plants" in datasets:
            mirror.set_faults(_demo_faults(store, store.fetch_list("plants")))
        for step, name in enumerate(datasets, start=1):
            _, _, images, _ = _dataset_assets(defs, name)
            keys = instance.get_dynamic_partitions(f"{name}_image_batches")
            print(f"2/3 ({step}/{len(datasets)}) {name}/image_batches: {len(keys)} partitions from {mirror.base_url()}")
            with _showing_batches(store, name, store.fetch_list(name)) as (say, run_config):
                for key in keys:
                    _run([images], instance, resources, partition_key=key, run_config=run_config)
                    say(f"    {name} {key} done")
        for step, name in enumerate(datasets, start=1):
            print(f"3/3 ({step}/{len(datasets)}) {name}/training_dataset -> {store.training_dir(name)}")
            _run([_dataset_assets(defs, name)[3]], instance, resources, run_config=_QUIET)
        _print_summary(store, datasets, checks_passed, time.monotonic() - started)
    return 0


def _print_summary(store: DataStore, datasets: list[str], checks: dict[str, bool], seconds: float) -> None:
    root = store.root
    with store.connect() as con:

        def one(sql: str) -> Any:
            return con.execute(sql).fetchone()[0]  # type: ignore[index]

        observations = one(f"SELECT count(*) FROM {sql_string(store.table('observations'))}")
        media = one(f"SELECT count(*) FROM {sql_string(store.table('media'))}")
        rejects = one(f"SELECT count(*) FROM read_parquet({sql_string(str(root / 'rejects' / '*.parquet'))})")
        print()
        print(f"observations.parquet  {observations:>8,} rows")
        print(f"media.parquet         {media:>8,} rows")
        print(f"rejects/*.parquet     {rejects:>8,} malformed lines set aside (the sample has some on purpose)")
        for name in datasets:
            photos = one(f"SELECT count(*) FROM {sql_string(store.fetch_list(name))}")
            manifests = sql_string(str(store.manifests_dir(name) / "*.parquet"))
            print(f"\ndataset {name}: fetch.parquet {photos:,} photos to fetch")
            if photos == 0:
                continue
            for status, count, size in con.execute(
                f"SELECT status, count(*), sum(bytes) FROM read_parquet({manifests}) GROUP BY ALL ORDER BY 2 DESC"
            ).fetchall():
                print(f"  images: {status:17s}{count:>6,}  {int(size or 0) / 1e6:.1f} MB")
            for photo_id, error in con.execute(
                f"SELECT photo_id, error FROM read_parquet({manifests}) WHERE status LIKE 'failed%' ORDER BY photo_id"
            ).fetchall():
                print(f"    photo {photo_id}: {error}")
            print(f"  manifests in {store.manifests_dir(name)}")
            _print_training(store.training_dir(name))
    print()
    for name, passed in checks.items():
        note = f" (soft limit {DEMO_MAX_REJECT_SHARE:.0%} for the sample's deliberate malformed lines)" if "rejected" in name else ""
        print(f"check {name}: {'passed' if passed else 'failed'}{note}")
    print(f"\nphotos in {store.photos_root()} (one copy per photo and size); {seconds:.1f} s in all")


def _print_training(out_dir: StorePath) -> None:
    """The training dataset's summary and how to load each of its exports."""
    print("  " + summary_text(out_dir).replace("\n", "\n  "))
    print("  load it:")
    print(f"    pandas:        pd.read_parquet({str(out_dir / 'dataset.parquet')!r})  (the index: path, label, split, ...)")
    if (out_dir / "imagefolder").is_dir():
        print(f"    Hugging Face:  datasets.load_dataset('imagefolder', data_dir={str(out_dir / 'imagefolder')!r})")
    if (out_dir / "webdataset").is_dir():
        shards = str(out_dir / "webdataset" / "train" / "*.tar")
        print(f"    WebDataset:    webdataset.WebDataset(sorted(glob.glob({shards!r}))).decode('pil')")
    if (out_dir / "coco").is_dir():
        print(f"    COCO:          json.load(open({str(out_dir / 'coco' / 'train.json')!r}))  (file_name relative to {out_dir})")
    print(f"    or: inat-assets report {out_dir.parent.name}")


def demo_store(data_dir: str | None = None, environ: Mapping[str, str] | None = None) -> DataStore:
    """The demo's data directory, through the one parse of INAT_DATA_DIR (a folder or an object-store URL):
    ``data_dir``, else INAT_DATA_DIR, else ./demo-data (`demo` and `ui --demo` alike)."""
    environ = os.environ if environ is None else environ
    return DataStore.from_setting(
        data_dir or environ.get("INAT_DATA_DIR") or DEMO_DATA_DIR, environ.get("INAT_SCRATCH_DIR", "")
    )
