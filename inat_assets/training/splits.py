"""Leak-free, stable splits: every photo of one group gets the split of its group.

The rule (also in the dataset card):
1. Group: ``observer_taxon`` (default) = (label, observer login; the observation when the login is
   missing); ``observation`` = the observation. One observation has one observer and one label,
   so with the default no observation straddles splits either.
2. A group that was in the previous dataset.parquet (built with the same label rank and split
   settings) keeps its split. A refresh that adds batches therefore never moves a photo.
3. A new group gets u = md5("<seed>:<group>") as a number in [0, 1): test if u >= 1 - test,
   val if u >= 1 - test - val, train otherwise. Adding other groups does not change u.
4. Per-class minimums: while a class has fewer val (test) photos than declared, new train groups
   move to val (test), highest u first, as long as the class keeps one train group. Only groups
   that are new in this build move, so rule 2 holds.
5. ``train_mini`` (optional): the first N train photos of each class by md5("<seed>:<photo id>").
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from inat_assets.dwca.convert import sql_string
from inat_assets.training.index import photo_hash_sql
from inat_assets.training.options import TrainingOptions

SPLITS = ("train", "val", "test")
FINGERPRINT_KEY = "inat_split_fingerprint"


def previous_fingerprint(con: duckdb.DuckDBPyConnection, index: Path) -> str | None:
    if not index.exists():
        return None
    rows = con.execute(
        f"SELECT value FROM parquet_kv_metadata({sql_string(index)}) WHERE key = ?", [FINGERPRINT_KEY.encode()]
    ).fetchall()
    return rows[0][0].decode() if rows else None


def assign_splits(con: duckdb.DuckDBPyConnection, options: TrainingOptions, previous_index: Path) -> int:
    """Add ``split_group``, ``split`` and ``mini`` to temp table ``training_kept``.

    Returns the number of groups whose split was taken from ``previous_index``.
    """
    s = options.splits
    group = (
        "'obs:' || observation_id"
        if s.group_by == "observation"
        else "label || chr(31) || coalesce('user:' || observer, 'obs:' || observation_id)"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE training_grouped AS SELECT *, {group} AS split_group FROM training_kept")
    reuse = previous_fingerprint(con, previous_index) == options.split_fingerprint()
    previous = (
        f"SELECT split_group, any_value(split) AS split FROM read_parquet({sql_string(previous_index)}) GROUP BY ALL"
        if reuse
        else "SELECT NULL::VARCHAR AS split_group, NULL::VARCHAR AS split WHERE FALSE"
    )
    u = photo_hash_sql(s.seed, "g.split_group")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE training_groups AS
        SELECT g.label, g.split_group, count(*) AS photos, {u} AS u, p.split AS previous,
               coalesce(p.split, CASE WHEN {u} >= {1.0 - s.test} THEN 'test'
                                      WHEN {u} >= {1.0 - s.test - s.val} THEN 'val'
                                      ELSE 'train' END) AS split
        FROM training_grouped AS g LEFT JOIN ({previous}) AS p USING (split_group)
        GROUP BY g.label, g.split_group, p.split
        """
    )
    reused = int(con.execute("SELECT count(*) FROM training_groups WHERE previous IS NOT NULL").fetchone()[0])  # type: ignore[index]
    for split, minimum in (("test", s.min_test_per_class), ("val", s.min_val_per_class)):
        if minimum > 0:
            _top_up(con, split, minimum)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE training_split AS
        SELECT k.*, g.split FROM training_grouped AS k JOIN training_groups AS g USING (split_group)
        """
    )
    con.execute("DROP TABLE training_grouped; DROP TABLE training_kept")
    mini = "FALSE"
    if options.mini_per_class is not None:
        mini = f"""split = 'train' AND row_number() OVER (
            PARTITION BY label, split = 'train' ORDER BY {photo_hash_sql(s.seed, 'photo_id')}, photo_id
        ) <= {int(options.mini_per_class)}"""
    con.execute(f"CREATE OR REPLACE TEMP TABLE training_split AS SELECT *, {mini} AS mini FROM training_split")
    return reused


def _top_up(con: duckdb.DuckDBPyConnection, split: str, minimum: int) -> None:
    """Move new train groups into ``split`` (highest u first) until each class has ``minimum`` photos."""
    con.execute(
        f"""
        UPDATE training_groups AS t SET split = '{split}'
        FROM (
            SELECT c.split_group FROM (
                SELECT g.split_group, g.previous,
                       sum(g.photos) OVER (PARTITION BY g.label ORDER BY g.u DESC, g.split_group
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before,
                       row_number() OVER (PARTITION BY g.label ORDER BY g.u DESC, g.split_group) AS rank,
                       coalesce(h.have, 0) AS have, tr.train_groups
                FROM training_groups AS g
                LEFT JOIN (SELECT label, sum(photos) AS have FROM training_groups
                           WHERE split = '{split}' GROUP BY label) AS h USING (label)
                JOIN (SELECT label, count(*) AS train_groups FROM training_groups
                      WHERE split = 'train' GROUP BY label) AS tr USING (label)
                WHERE g.split = 'train' AND g.previous IS NULL
            ) AS c
            WHERE c.have < {int(minimum)} AND coalesce(c.before, 0) < {int(minimum)} - c.have
              AND c.rank < c.train_groups
        ) AS m
        WHERE t.split_group = m.split_group
        """
    )
