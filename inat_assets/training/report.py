"""The terminal summary of a built dataset (``inat-assets report DATASET`` prints it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from inat_assets.errors import TrainingDatasetError

if TYPE_CHECKING:
    from inat_assets.training.dataset import TrainingDatasetResult

DROP_EXPLANATIONS = {
    "not_downloaded": "not downloaded yet (batch not materialized)",
    "download_failed": "download failed",
    "not_in_fetch_list": "no longer in the fetch list",
    "licence_not_allowed": "licence not allowed by the policy",
    "hybrid": "hybrids (excluded)",
    "rank_above_label": "identified only above the label rank",
    "duplicate_sha256": "exact duplicates (same bytes, lower photo id kept)",
    "per_observation_cap": "over the per-observation cap",
    "per_observer_cap": "over the per-observer-per-class cap",
    "per_class_cap": "over the per-class cap",
    "class_below_minimum": "in classes below the minimum size",
}


def load_result(out_dir: Path) -> TrainingDatasetResult:
    from inat_assets.training.dataset import SUMMARY_NAME, TrainingDatasetResult

    summary = out_dir / SUMMARY_NAME
    if not summary.exists():
        raise TrainingDatasetError(
            f"{out_dir} has no {SUMMARY_NAME}: the training dataset was not built there yet; materialize its dataset asset first"
        )
    return TrainingDatasetResult.from_json(summary.read_text(encoding="utf-8"))


def drop_lines(result: TrainingDatasetResult) -> list[tuple[str, int]]:
    return [(DROP_EXPLANATIONS[k], n) for k, n in vars(result.drops).items() if n]


def summary_text(result_or_dir: TrainingDatasetResult | Path) -> str:
    """A plain-text summary: coverage of the fetch list, splits, classes, licences, drops, exports."""
    # A folder is a Path, or a Location when the data directory is on an object store.
    r = load_result(result_or_dir) if hasattr(result_or_dir, "joinpath") else result_or_dir  # type: ignore[arg-type]
    lines = [f"Training dataset in {r.out_dir}"]
    lines.append(
        f"  {r.rows:,} photos in {r.classes:,} classes from {r.usable_photos:,} downloaded "
        f"of {r.fetch_rows:,} in the fetch list ({100 * r.missing_fraction:.1f}% missing"
        f"{', ' + format(r.drops.not_downloaded, ',') + ' not downloaded yet' if r.drops.not_downloaded else ''})"
    )
    lines.append("  splits:   " + ", ".join(f"{s} {n:,} ({r.classes_per_split.get(s, 0):,} classes)" for s, n in r.splits.items()))
    lines.append("  licences: " + ", ".join(f"{c} {n:,}" for c, n in r.licences.items()))
    drops = drop_lines(r)
    if drops:
        lines.append("  dropped:")
        lines += [f"    {n:>10,}  {why}" for why, n in drops]
    if r.classes_below_minimum:
        shown = ", ".join(f"{lab} ({n})" for lab, n in r.classes_below_minimum[:5])
        more = len(r.classes_below_minimum) - 5
        lines.append(f"  classes dropped below the minimum: {shown}{f' and {more} more' if more > 0 else ''}")
    for split, n in r.classes_short_of_minimum.items():
        if n:
            lines.append(f"  {n:,} classes have fewer {split} photos than the declared minimum (too few groups)")
    if r.reused_split_groups:
        lines.append(f"  {r.reused_split_groups:,} split groups kept their split from the previous build")
    for name, paths in r.exports.items():
        lines.append(f"  export {name}: {len(paths)} file{'s' if len(paths) != 1 else ''} under {r.out_dir / name}")
    lines.append(f"  card: {r.card}   attribution: {r.attribution}   plots: {r.out_dir / 'plots'}")
    return "\n".join(lines)
