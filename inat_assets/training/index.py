"""Build the candidate photo set of a training dataset, apply labels, policies and caps, counting drops.

Everything runs in DuckDB over the manifests, fetch.parquet and observations.parquet. The stages are
narrow temporary tables (photo id, group keys, label; about 100 bytes a photo), so that each drop
can be counted as the difference of two row counts; the wide columns are joined back only in the
final COPY that writes dataset.parquet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from inat_assets.dwca.convert import sql_string
from inat_assets.errors import TrainingDatasetError
from inat_assets.training.options import INFRASPECIFIC_RANKS, TrainingOptions

USABLE_STATUSES = ("ok", "cached")
HYBRID_SIGN = "\u00d7"  # the multiplication sign iNaturalist writes in hybrid names


@dataclass(frozen=True)
class DropCounts:
    """Photos that are not in the index, by reason. The first two never reached the usable set."""

    not_downloaded: int  # in the fetch list, but no batch manifest lists them yet
    download_failed: int  # listed in a manifest with a failed status
    not_in_fetch_list: int  # usable, but the photo is no longer selected by the fetch list
    licence_not_allowed: int
    hybrid: int
    rank_above_label: int  # identified only above the label rank (e.g. genus-level for species labels)
    duplicate_sha256: int  # same bytes as a photo with a lower id, which is kept
    per_observation_cap: int
    per_observer_cap: int
    per_class_cap: int
    class_below_minimum: int

    def after_usable(self) -> int:
        """Drops counted from the usable manifest rows (index rows = usable photos - this)."""
        return (
            self.not_in_fetch_list + self.licence_not_allowed + self.hybrid + self.rank_above_label
            + self.duplicate_sha256 + self.per_observation_cap + self.per_observer_cap
            + self.per_class_cap + self.class_below_minimum
        )  # fmt: skip


@dataclass(frozen=True)
class BatchStats:
    batch: str
    usable: int
    failed: int


@dataclass(frozen=True)
class Candidates:
    """The kept photos (temp table ``training_kept``) and what was counted on the way."""

    fetch_rows: int
    manifest_rows: int
    usable_photos: int
    drops: DropCounts
    classes_below_minimum: list[tuple[str, int]]
    batches: list[BatchStats]
    has_dimensions: bool


def photo_hash_sql(seed: int, key_sql: str) -> str:
    """A value in [0, 1) from md5("<seed>:<key>"): the first 15 hex digits / 16**15.

    md5 rather than DuckDB's ``hash()``, whose values are not promised to stay the same across
    DuckDB versions; a split must not change because a library was upgraded. The same number in
    Python: ``int(hashlib.md5(f"{seed}:{key}".encode()).hexdigest()[:15], 16) / 16**15``.
    """
    return f"(('0x' || left(md5('{int(seed)}:' || ({key_sql})::VARCHAR), 15))::BIGINT / 1152921504606846976.0)"


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def _manifest_source(manifests: Sequence[Path]) -> str:
    files = ", ".join(sql_string(p) for p in manifests)
    return f"read_parquet([{files}], union_by_name = true, filename = true)"


def _label_sql(options: TrainingOptions) -> tuple[str, str, str]:
    """SQL for (species, label, is_hybrid) over f (fetch list rows)."""
    infra = ", ".join(sql_string(r) for r in INFRASPECIFIC_RANKS)
    is_hybrid = f"(lower(f.taxon_rank) IN ('hybrid', 'infrahybrid') OR f.scientific_name LIKE '%{HYBRID_SIGN}%')"
    species = f"""CASE
        WHEN lower(f.taxon_rank) = 'species' THEN f.scientific_name
        WHEN lower(f.taxon_rank) IN ({infra}) THEN array_to_string(string_split(f.scientific_name, ' ')[1:2], ' ')
        WHEN {is_hybrid} THEN f.scientific_name
    END"""
    label = "f.species" if options.label_rank == "species" else f'f."{options.label_rank}"'
    return species, label, is_hybrid


def select_candidates(
    con: duckdb.DuckDBPyConnection,
    options: TrainingOptions,
    fetch_list: Path,
    observations: Path,
    manifests: Sequence[Path],
) -> Candidates:
    """Fill temp table ``training_kept`` (photo_id, label, group columns) and count every drop."""
    fetch = f"read_parquet({sql_string(fetch_list)})"
    fetch_rows = _count(con, fetch)
    if not manifests:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE training_usable (photo_id BIGINT, path VARCHAR, bytes BIGINT, "
            "sha256 VARCHAR, width INTEGER, height INTEGER, batch VARCHAR)"
        )
        manifest_rows, failed, has_dims, batches = 0, 0, False, []
    else:
        source = _manifest_source(manifests)
        columns = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        missing = {"photo_id", "path", "status"} - columns
        if missing:
            raise TrainingDatasetError(
                f"the manifests in {manifests[0].parent} lack the columns {sorted(missing)}; "
                "re-materialize their image batches"
            )
        has_dims = {"width", "height"} <= columns
        dims = "width::INTEGER AS width, height::INTEGER AS height" if has_dims else "NULL::INTEGER AS width, NULL::INTEGER AS height"
        sha = "sha256" if "sha256" in columns else "NULL::VARCHAR AS sha256"
        nbytes = "bytes" if "bytes" in columns else "NULL::BIGINT AS bytes"
        statuses = ", ".join(sql_string(s) for s in USABLE_STATUSES)
        batch = "regexp_extract(filename, '([^/\\\\]+)\\.parquet$', 1)"
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE training_manifest AS
            SELECT photo_id, path, status, {nbytes}, {sha}, {dims}, {batch} AS batch FROM {source}
            """
        )
        manifest_rows = _count(con, "training_manifest")
        # A photo listed twice (two manifests) counts once; a usable row wins over a failed one.
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE training_usable AS
            SELECT photo_id, path, bytes, sha256, width, height, batch FROM training_manifest
            WHERE status IN ({statuses}) AND path IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY photo_id ORDER BY batch) = 1
            """
        )
        failed = int(
            con.execute(
                f"""SELECT count(DISTINCT photo_id) FROM training_manifest
                WHERE status NOT IN ({statuses}) AND photo_id NOT IN (SELECT photo_id FROM training_usable)"""
            ).fetchone()[0]  # type: ignore[index]
        )
        batches = [
            BatchStats(str(b), int(u), int(fl))
            for b, u, fl in con.execute(
                f"""SELECT batch, count(*) FILTER (WHERE status IN ({statuses})),
                           count(*) FILTER (WHERE status NOT IN ({statuses}))
                    FROM training_manifest GROUP BY batch ORDER BY batch"""
            ).fetchall()
        ]
    usable = _count(con, "training_usable")
    not_downloaded = int(
        con.execute(
            f"""SELECT count(*) FROM {fetch} AS f
            WHERE f.photo_id NOT IN (SELECT photo_id FROM {"training_manifest" if manifests else "training_usable"})"""
        ).fetchone()[0]  # type: ignore[index]
    )

    con.execute("DROP TABLE IF EXISTS training_manifest")  # free its memory for the stages below
    species, label, is_hybrid = _label_sql(options)
    allowed = ", ".join(sql_string(c) for c in options.licences.allowed_codes())
    hybrid_drop = "FALSE" if options.include_hybrids or options.label_rank != "species" else is_hybrid
    observer = "coalesce(o.inaturalistLogin, o.recordedBy)"
    # One row per usable photo in the fetch list, with the reason it is dropped (NULL = kept so far).
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE training_labelled AS
        SELECT u.photo_id, f.observation_id, u.sha256, {observer} AS observer,
               f.species, {label} AS label,
               CASE WHEN f.license IS NULL OR f.license NOT IN ({allowed}) THEN 'licence'
                    WHEN {hybrid_drop} THEN 'hybrid'
                    WHEN ({label}) IS NULL THEN 'rank'
               END AS drop_reason
        FROM training_usable AS u
        JOIN (SELECT *, ({species}) AS species FROM {fetch} AS f) AS f ON f.photo_id = u.photo_id
        LEFT JOIN (SELECT id, inaturalistLogin, recordedBy FROM read_parquet({sql_string(observations)}))
            AS o ON o.id = f.observation_id
        """
    )
    in_fetch = _count(con, "training_labelled")
    reasons = dict(
        con.execute("SELECT drop_reason, count(*) FROM training_labelled GROUP BY ALL").fetchall()
    )
    # Exact duplicates: same bytes under two photo ids; the lowest id stays.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE training_stage AS
        SELECT * EXCLUDE (drop_reason) FROM training_labelled WHERE drop_reason IS NULL
        QUALIFY sha256 IS NULL OR row_number() OVER (PARTITION BY sha256 ORDER BY photo_id) = 1
        """
    )
    con.execute("DROP TABLE training_labelled")
    stage_counts = [_count(con, "training_stage")]
    caps = options.caps
    seed = options.splits.seed
    cap_windows = (
        (caps.max_per_observation, "PARTITION BY observation_id ORDER BY photo_id"),
        (caps.max_per_observer_per_class, "PARTITION BY label, coalesce(observer, observation_id::VARCHAR) ORDER BY photo_id"),
        (caps.max_per_class, f"PARTITION BY label ORDER BY {photo_hash_sql(seed, 'photo_id')}, photo_id"),
    )
    for cap, window in cap_windows:
        if cap is not None:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE training_stage AS SELECT * FROM training_stage
                QUALIFY row_number() OVER ({window}) <= {int(cap)}"""
            )
        stage_counts.append(_count(con, "training_stage"))
    below = [
        (str(lab), int(n))
        for lab, n in con.execute(
            f"""SELECT label, count(*) AS n FROM training_stage GROUP BY label
            HAVING count(*) < {int(caps.min_per_class)} ORDER BY n DESC, label"""
        ).fetchall()
    ]
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE training_kept AS SELECT * FROM training_stage
        WHERE label IN (SELECT label FROM training_stage GROUP BY label HAVING count(*) >= {int(caps.min_per_class)})"""
    )
    con.execute("DROP TABLE training_stage")
    kept = _count(con, "training_kept")
    drops = DropCounts(
        not_downloaded=not_downloaded,
        download_failed=failed,
        not_in_fetch_list=usable - in_fetch,
        licence_not_allowed=int(reasons.get("licence", 0)),
        hybrid=int(reasons.get("hybrid", 0)),
        rank_above_label=int(reasons.get("rank", 0)),
        duplicate_sha256=int(reasons.get(None, 0)) - stage_counts[0],
        per_observation_cap=stage_counts[0] - stage_counts[1],
        per_observer_cap=stage_counts[1] - stage_counts[2],
        per_class_cap=stage_counts[2] - stage_counts[3],
        class_below_minimum=stage_counts[3] - kept,
    )
    return Candidates(
        fetch_rows=fetch_rows,
        manifest_rows=manifest_rows,
        usable_photos=usable,
        drops=drops,
        classes_below_minimum=below,
        batches=batches,
        has_dimensions=has_dims,
    )
