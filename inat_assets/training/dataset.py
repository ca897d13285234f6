"""Entry point: turn a dataset's downloaded batches into a training-ready dataset folder.

Layout of ``out_dir`` (every file written atomically):
    dataset.parquet      the index, one row per usable photo, sorted by (split, photo_id)
    ATTRIBUTION.csv      creator, licence and source of every photo in the index
    README.md            the dataset card
    summary.json         the TrainingDatasetResult (read by ``summary_text`` / ``inat-assets report``)
    plots/*.png          photos per class, split sizes, licences, image sizes, download success
    coco/<split>.json    (exports.coco) iNat2021-style COCO JSON
    webdataset/<split>/<split>-NNNNNN.tar   (exports.webdataset)
    imagefolder/<split>/<label>/<photo_id>.<ext> + metadata.jsonl   (exports.imagefolder)

``out_dir`` may be on an object store (INAT_DATA_DIR=s3://...): the manifests, fetch list and tables
are then read by DuckDB through the store's registered filesystem and the photos with concurrent
GETs; every file is staged in local scratch (a folder of this build, deleted afterwards) and uploaded
whole, the exports as described in `inat_assets.training.exports`. The index is kept in that scratch
folder too, since every export reads it again (a local file, not one more download per export).
summary.json is written last in both cases: its presence and content mark a finished build.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from inat_assets.dwca.convert import sql_string
from inat_assets.storage import (
    StorePath,
    atomic_path,
    atomic_write_bytes,
    guarded,
    register,
    run_scratch,
    store_path,
)
from inat_assets.store import Location
from inat_assets.training.attribution import write_attribution
from inat_assets.training.card import write_card
from inat_assets.training.dimensions import fill_missing_dimensions
from inat_assets.training.exports import check_photos_exist
from inat_assets.training.exports.coco import write_coco
from inat_assets.training.exports.imagefolder import write_imagefolder
from inat_assets.training.exports.webdataset import write_shards
from inat_assets.training.index import BatchStats, DropCounts, select_candidates
from inat_assets.training.options import TrainingOptions
from inat_assets.training.plots import write_plots
from inat_assets.training.splits import FINGERPRINT_KEY, assign_splits

INDEX_NAME = "dataset.parquet"
SUMMARY_NAME = "summary.json"
INDEX_ROW_GROUP_ROWS = 65_536


class _StageClock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.laps[stage] = round(now - self._last, 2)
        self._last = now


@dataclass(frozen=True)
class TrainingDatasetResult:
    out_dir: StorePath
    index: StorePath
    fetch_rows: int  # photos the fetch list selects
    manifest_rows: int  # rows in the manifests present
    usable_photos: int  # distinct photos with status ok/cached
    rows: int  # photos in the index
    classes: int
    splits: dict[str, int]  # photos per split (train, val, test; train_mini when declared)
    classes_per_split: dict[str, int]
    licences: dict[str, int]
    drops: DropCounts
    classes_below_minimum: list[tuple[str, int]]
    classes_short_of_minimum: dict[str, int]  # classes below the declared val/test minimum, per split
    reused_split_groups: int  # groups whose split came from the previous build
    dimensions_read_from_files: int  # photos whose width/height the manifests lacked (read from headers)
    batches: list[BatchStats]
    attribution: StorePath
    card: StorePath
    plots: dict[str, StorePath]
    exports: dict[str, list[StorePath]] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    archive_info: dict[str, str] = field(default_factory=dict)
    selection: dict[str, object] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage of this build

    @property
    def missing_fraction(self) -> float:
        """Share of the fetch list not (yet) downloaded successfully."""
        if not self.fetch_rows:
            return 0.0
        return (self.drops.not_downloaded + self.drops.download_failed) / self.fetch_rows

    def to_json(self) -> str:
        # Not dataclasses.asdict(self): it would turn a Location (a dataclass too) into a dict of its fields.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps(fields, default=_plain, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainingDatasetResult:
        raw = json.loads(text)
        raw["out_dir"], raw["index"] = _recorded(raw["out_dir"]), _recorded(raw["index"])
        raw["attribution"], raw["card"] = _recorded(raw["attribution"]), _recorded(raw["card"])
        raw["drops"] = DropCounts(**raw["drops"])
        raw["batches"] = [BatchStats(**b) for b in raw["batches"]]
        raw["classes_below_minimum"] = [tuple(x) for x in raw["classes_below_minimum"]]
        raw["plots"] = {k: _recorded(v) for k, v in raw["plots"].items()}
        raw["exports"] = {k: [_recorded(p) for p in v] for k, v in raw["exports"].items()}
        return cls(**raw)


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, Location | type):
        return dataclasses.asdict(value)  # DropCounts, BatchStats
    return str(value)  # Path, Location


def _recorded(text: str) -> StorePath:
    """A path summary.json recorded: a local path as written, a store URL as a `Location`."""
    return store_path(text) if "://" in text else Path(text)


def _write_index(
    con: duckdb.DuckDBPyConnection, options: TrainingOptions, fetch_list: StorePath, observations: StorePath, index: Path
) -> None:
    """COPY the kept photos with their wide columns, sorted by (split, photo_id) for per-split reads."""
    fetch = f"read_parquet({sql_string(fetch_list)})"
    obs = f"read_parquet({sql_string(observations)})"
    present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {obs}").fetchall()}
    # Coordinates are not in fetch.parquet; older or trimmed tables may lack them (then NULL).
    coordinates = ", ".join(
        f"{name} AS {alias}" if name in present else f"NULL::DOUBLE AS {alias}"
        for name, alias in (("decimalLatitude", "latitude"), ("decimalLongitude", "longitude"),
                            ("coordinateUncertaintyInMeters", "location_uncertainty"))
    )  # fmt: skip
    url = "occurrenceID" if "occurrenceID" in present else "NULL::VARCHAR"
    # Label ids from the few distinct labels, not a window over every photo (a second full sort of
    # the wide rows ran out of memory at 256 MB for 825,000 photos).
    con.execute(
        """CREATE OR REPLACE TEMP TABLE training_labels AS
        SELECT label, (row_number() OVER (ORDER BY label) - 1)::INTEGER AS label_id
        FROM (SELECT DISTINCT label FROM training_split)"""
    )
    con.execute("SET preserve_insertion_order = true")
    with atomic_path(index) as tmp:
        con.execute(
            f"""
            COPY (
                SELECT u.path, s.photo_id, s.observation_id, s.label, l.label_id,
                       f.kingdom, f.phylum, f."class", f."order", f.family, f.genus, s.species,
                       f.taxon_id, f.taxon_rank, f.scientific_name,
                       u.width, u.height, u.bytes, u.sha256,
                       f.license, f.license_url, f.creator, f.rights_holder,
                       s.observer AS observer_login,
                       coalesce(o.url, 'https://www.inaturalist.org/observations/' || s.observation_id) AS observation_url,
                       f.url AS photo_url, f.event_date, f.country_code,
                       o.latitude, o.longitude, o.location_uncertainty, u.batch,
                       s.split, s.mini, s.split_group
                FROM training_split AS s
                JOIN training_labels AS l USING (label)
                JOIN training_usable AS u USING (photo_id)
                JOIN {fetch} AS f USING (photo_id)
                LEFT JOIN (SELECT id, {url} AS url, {coordinates} FROM {obs}) AS o ON o.id = s.observation_id
                ORDER BY list_position(['train', 'val', 'test'], s.split), s.photo_id
            ) TO {sql_string(tmp)} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {INDEX_ROW_GROUP_ROWS},
                                    KV_METADATA {{{FINGERPRINT_KEY}: {sql_string(options.split_fingerprint())}}})
            """
        )


@contextmanager
def _work_dir(out_dir: StorePath) -> Iterator[Path]:
    """Local working space of one build: the dataset folder itself when local (as before the store
    existed); a fresh folder in the store's local scratch otherwise, removed when the build ends."""
    if isinstance(out_dir, Location):
        with run_scratch(out_dir.staging.parent / "training", f"building the training dataset in {out_dir}") as work:
            yield work
        return
    yield out_dir


def build_training_dataset(
    con: duckdb.DuckDBPyConnection,
    options: TrainingOptions,
    fetch_list: StorePath,
    observations_table: StorePath,
    manifests: StorePath | Sequence[StorePath],
    out_dir: StorePath,
    archive_info: Mapping[str, str] | None = None,
    *,
    selection: Mapping[str, object] | None = None,
    plots: bool = True,
) -> TrainingDatasetResult:
    """Build the index, attribution, card, plots and the declared exports in ``out_dir``.

    ``manifests`` is the folder of batch manifests (every ``*.parquet`` in it) or a list of them;
    batches not materialized yet are simply absent and reported as not downloaded. ``con`` should
    already carry the project's memory limit and spill folder. ``archive_info`` (e.g. date, ETag,
    URL of the archive) and ``selection`` (the dataset's declared filters) go into the card as
    given. ``plots=False`` skips the PNGs (about 0.5 s each to render; tests that do not look at
    them skip them). Holds ``out_dir/.lock`` while building (a second build waits for nothing: it
    fails with the holder's name; on a store that is a lease object, see `storage.acquire_guard`).
    Sets ``preserve_insertion_order = true`` on ``con`` and registers the stores of the inputs on it.
    """
    folder = isinstance(manifests, Path | Location)
    paths = sorted(manifests.glob("*.parquet")) if folder else sorted(manifests)  # type: ignore[union-attr, arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    register(con, fetch_list, observations_table, out_dir, *paths)
    with (
        guarded(out_dir / ".lock", purpose=f"building the training dataset in {out_dir}"),
        _work_dir(out_dir) as work,
    ):
        return _build(
            con, options, fetch_list, observations_table, paths, out_dir, work,
            dict(archive_info or {}), dict(selection or {}), plots,
        )  # fmt: skip


def _build(
    con: duckdb.DuckDBPyConnection,
    options: TrainingOptions,
    fetch_list: StorePath,
    observations: StorePath,
    manifests: list[StorePath],
    out_dir: StorePath,
    work: Path,
    archive_info: dict[str, str],
    selection: dict[str, object],
    with_plots: bool,
) -> TrainingDatasetResult:
    index = out_dir / INDEX_NAME
    # What the exports read: the index itself when local, its copy in the build's scratch on a store.
    local_index = index if isinstance(index, Path) else work / INDEX_NAME
    clock = _StageClock()
    candidates = select_candidates(con, options, fetch_list, observations, manifests)
    clock.lap("select")
    reused = assign_splits(con, options, index)
    clock.lap("splits")
    # Manifests without width/height (written before they carried them): read the kept photos' headers.
    header_reads = fill_missing_dimensions(con, "training_usable", "SELECT photo_id FROM training_split", work / ".dimensions.parquet")
    _write_index(con, options, fetch_list, observations, local_index)
    if isinstance(index, Location):
        # Before anything is published: a photo gone from the store fails the build here, leaving
        # the previous build's objects as they were (there is no folder swap on a store).
        check_photos_exist(con, local_index)
        index.upload(local_index)
    clock.lap("index")
    source = f"read_parquet({sql_string(local_index)})"
    has_mini = options.mini_per_class is not None
    per_split = {
        str(s): (int(n), int(c))
        for s, n, c in con.execute(f"SELECT split, count(*), count(DISTINCT label) FROM {source} GROUP BY split").fetchall()
    }
    if has_mini:
        n, c = con.execute(f"SELECT count(*), count(DISTINCT label) FROM {source} WHERE mini").fetchone()  # type: ignore[misc]
        per_split["train_mini"] = (int(n), int(c))
    order = ("train", "val", "test", "train_mini")
    splits = {s: per_split.get(s, (0, 0))[0] for s in order if s != "train_mini" or has_mini}
    rows, classes = con.execute(f"SELECT count(*), count(DISTINCT label) FROM {source}").fetchone()  # type: ignore[misc]
    short = {}
    for split, minimum in (("val", options.splits.min_val_per_class), ("test", options.splits.min_test_per_class)):
        if minimum:
            short[split] = int(
                con.execute(
                    f"""SELECT count(*) FROM (SELECT label, count(*) FILTER (WHERE split = '{split}') AS n
                        FROM {source} GROUP BY label) WHERE n < {int(minimum)}"""
                ).fetchone()[0]  # type: ignore[index]
            )
    licences = write_attribution(con, local_index, out_dir / "ATTRIBUTION.csv")
    clock.lap("attribution")
    exports: dict[str, list[StorePath]] = {}
    ex = options.exports
    if ex.imagefolder is not None:
        exports["imagefolder"] = [write_imagefolder(local_index, out_dir, work, ex.imagefolder, ex.resize)]
        clock.lap("imagefolder")
    if ex.webdataset is not None:
        shards = write_shards(local_index, out_dir, work, ex.webdataset, ex.resize, has_mini)
        exports["webdataset"] = [p for split_paths in shards.values() for p in split_paths]
        clock.lap("webdataset")
    if ex.coco:
        exports["coco"] = write_coco(con, local_index, out_dir, imagefolder=ex.imagefolder is not None, has_mini=has_mini)
        clock.lap("coco")
    plots = write_plots(con, local_index, out_dir, candidates.batches) if with_plots else {}
    clock.lap("plots")
    result = TrainingDatasetResult(
        out_dir=out_dir,
        index=index,
        fetch_rows=candidates.fetch_rows,
        manifest_rows=candidates.manifest_rows,
        usable_photos=candidates.usable_photos,
        rows=int(rows),
        classes=int(classes),
        splits=splits,
        classes_per_split={s: per_split.get(s, (0, 0))[1] for s in splits},
        licences=licences,
        drops=candidates.drops,
        classes_below_minimum=candidates.classes_below_minimum,
        classes_short_of_minimum=short,
        reused_split_groups=reused,
        dimensions_read_from_files=header_reads,
        batches=candidates.batches,
        attribution=out_dir / "ATTRIBUTION.csv",
        card=out_dir / "README.md",
        plots=plots,
        exports=exports,
        options=options.model_dump(mode="json"),
        archive_info=archive_info,
        selection=selection,
        seconds=clock.laps,
    )
    write_card(result, options)
    atomic_write_bytes(out_dir / SUMMARY_NAME, result.to_json().encode())
    return result
