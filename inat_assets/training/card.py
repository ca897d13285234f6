"""The dataset card (README.md in the dataset folder): what was selected, from which archive, what it
holds, what was dropped and why, and how to load each export. Terms and licences are linked, not
restated."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from inat_assets.storage import atomic_write_bytes
from inat_assets.training.options import TrainingOptions
from inat_assets.training.report import drop_lines

if TYPE_CHECKING:
    from inat_assets.training.dataset import TrainingDatasetResult

INAT_TERMS = "https://www.inaturalist.org/pages/terms"
CC_LICENSES = "https://creativecommons.org/licenses/"


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |" for row in rows]
    return out


def card_text(r: TrainingDatasetResult, options: TrainingOptions) -> str:
    name = str(r.selection.get("dataset") or r.out_dir.name)  # out_dir is datasets/<name>/training
    lines = [f"# {name}: iNaturalist research-grade photos for training", ""]
    nc_nd = {c: n for c, n in r.licences.items() if "-NC" in c or "-ND" in c}
    if nc_nd:
        lines += [
            "> **Warning:** this dataset includes photos under non-commercial (NC) or no-derivatives (ND) "
            f"licences ({', '.join(f'{c}: {n:,}' for c, n in nc_nd.items())}). NC photos may not be used "
            "commercially; ND photos may not be shared in modified form (resized, cropped). Check "
            "ATTRIBUTION.csv before you use or share the data.",
            "",
        ]
    lines += ["## Source", ""]
    if r.archive_info:
        lines += [f"- {k}: {v}" for k, v in r.archive_info.items()]
    lines += [
        f"- {r.fetch_rows:,} photos in the fetch list; {r.usable_photos:,} downloaded ({100 * r.missing_fraction:.1f}% not (yet) available)",
        f"- Photos and observations come from iNaturalist users; see iNaturalist's [terms]({INAT_TERMS}) and the "
        f"[Creative Commons licences]({CC_LICENSES}). Every photo's creator and licence is in `ATTRIBUTION.csv`.",
        "",
        "## Selection",
        "",
        *(["Photos selected by the declaration's filters:", "", "```json", json.dumps(r.selection, indent=2, default=str), "```", ""]
          if r.selection else []),
        "The declaration's training section:",
        "",
        "```json",
        json.dumps(options.model_dump(mode="json"), indent=2),
        "```",
        "",
        f"Labels are taken at rank **{options.label_rank}**; subspecies, varieties and forms roll up to their species; "
        f"hybrids are {'kept' if options.include_hybrids else 'excluded'}. Splits are assigned per group "
        f"(`{options.splits.group_by}`) by md5(\"seed:group\"), so no group straddles splits, and a group "
        "keeps its split in later builds with the same split settings.",
        "",
        "## Contents",
        "",
        f"{r.rows:,} photos in {r.classes:,} classes. `label_id` numbers the labels in alphabetical order "
        "within this build (a later build with more classes renumbers them): compare builds by `label`.",
        "",
        *_table(("split", "photos", "classes"), [(s, n, r.classes_per_split.get(s, 0)) for s, n in r.splits.items()]),
        "",
        *_table(("licence", "photos"), list(r.licences.items())),
        "",
        "## What was dropped and why",
        "",
        *(_table(("reason", "photos"), drop_lines(r)) if drop_lines(r) else ["Nothing."]),
        "",
    ]
    if r.classes_below_minimum:
        shown = ", ".join(f"{lab} ({n})" for lab, n in r.classes_below_minimum[:50])
        lines += [f"Classes below the minimum of {options.caps.min_per_class} photos ({len(r.classes_below_minimum):,}): {shown}", ""]
    lines += [
        "## Files and how to load them",
        "",
        "- `dataset.parquet`: one row per photo (path, label, label_id, lineage, licence, creator, split, ...). "
        "`pandas.read_parquet(\"dataset.parquet\")` or `duckdb.sql(\"FROM 'dataset.parquet'\")`.",
        "- `ATTRIBUTION.csv`: creator, licence (code, version, URL), photo and observation URL of every photo.",
        "- `plots/`: photos per class, split sizes, licences, image sizes, download success per batch.",
    ]
    if "webdataset" in r.exports:
        lines.append(
            "- `webdataset/<split>/*.tar`: `webdataset.WebDataset(sorted(glob.glob(\"webdataset/train/*.tar\")))"
            ".decode(\"pil\").to_tuple(\"jpg;png\", \"cls\", \"json\")`."
        )
    if "imagefolder" in r.exports:
        lines.append(
            "- `imagefolder/<split>/<label>/<photo_id>.jpg` with `metadata.jsonl`: "
            "`datasets.load_dataset(\"imagefolder\", data_dir=\"imagefolder\")` (the `label` column holds the name)."
        )
    if "coco" in r.exports:
        lines.append("- `coco/<split>.json`: COCO JSON in the iNat2021 competition layout (images, categories with lineage, annotations, licenses).")
    lines.append("")
    return "\n".join(lines)


def write_card(r: TrainingDatasetResult, options: TrainingOptions) -> None:
    atomic_write_bytes(r.card, card_text(r, options).encode())
