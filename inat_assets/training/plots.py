"""PNG plots of a built dataset, for people (and the Dagster UI's asset metadata) rather than tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb

from inat_assets.dwca.convert import sql_string
from inat_assets.storage import atomic_path
from inat_assets.training.index import BatchStats

PLOT_NAMES = ("photos_per_class", "split_sizes", "licences", "image_sizes", "download_success")


def _save(fig: object, final: Path) -> Path:
    with atomic_path(final) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")  # type: ignore[attr-defined]
    return final


def write_plots(
    con: duckdb.DuckDBPyConnection, index: Path, out_dir: Path, batches: Sequence[BatchStats]
) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    from matplotlib import pyplot as plt

    source = f"read_parquet({sql_string(index)})"
    folder = out_dir / "plots"
    paths: dict[str, Path] = {}

    per_class = [n for (n,) in con.execute(f"SELECT count(*) AS n FROM {source} GROUP BY label ORDER BY n DESC").fetchall()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(per_class) + 1), per_class, marker="." if len(per_class) < 200 else None)
    ax.set(xlabel="class rank", ylabel="photos", title=f"Photos per class ({len(per_class)} classes)")
    if per_class and per_class[0] > 10 * max(per_class[-1], 1):
        ax.set_yscale("log")
    paths["photos_per_class"] = _save(fig, folder / "photos_per_class.png")
    plt.close(fig)

    splits = con.execute(
        f"SELECT split, count(*), count(DISTINCT label) FROM {source} GROUP BY split "
        "ORDER BY list_position(['train', 'val', 'test'], split)"
    ).fetchall()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars = ax.bar([s for s, _, _ in splits], [n for _, n, _ in splits], color=["#4c72b0", "#dd8452", "#55a868"][: len(splits)])
    ax.bar_label(bars, labels=[f"{n:,}\n{c:,} classes" for _, n, c in splits])
    ax.set(ylabel="photos", title="Split sizes")
    paths["split_sizes"] = _save(fig, folder / "split_sizes.png")
    plt.close(fig)

    licences = con.execute(f"SELECT coalesce(license, 'none'), count(*) FROM {source} GROUP BY ALL ORDER BY 2 DESC").fetchall()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.barh([c for c, _ in licences][::-1], [n for _, n in licences][::-1])
    ax.set(xlabel="photos", title="Licences")
    paths["licences"] = _save(fig, folder / "licences.png")
    plt.close(fig)

    has_dims = con.execute(f"SELECT count(width) > 0 FROM {source}").fetchone()[0]  # type: ignore[index]
    column, label = ("greatest(width, height)", "longest side (pixels)") if has_dims else ("bytes / 1024", "file size (KiB)")
    sizes = [v for (v,) in con.execute(f"SELECT {column} FROM {source} USING SAMPLE 100000 ROWS").fetchall() if v is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(sizes, bins=50)
    ax.set(xlabel=label, ylabel="photos", title="Image sizes" + (" (sample of 100,000)" if len(sizes) >= 100_000 else ""))
    paths["image_sizes"] = _save(fig, folder / "image_sizes.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(batches))
    ax.bar(xs, [b.usable for b in batches], label="usable", color="#55a868")
    ax.bar(xs, [b.failed for b in batches], bottom=[b.usable for b in batches], label="failed", color="#c44e52")
    ax.set(xlabel="batch", ylabel="photos", title=f"Download success per batch ({len(batches)} batches)")
    if 0 < len(batches) <= 20:
        ax.set_xticks(list(xs), [b.batch for b in batches], rotation=60, fontsize=7)
    ax.legend()
    paths["download_success"] = _save(fig, folder / "download_success.png")
    plt.close(fig)
    return paths
