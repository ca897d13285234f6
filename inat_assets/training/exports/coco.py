"""COCO-style JSON in the iNat2021 competition layout, one file per split: ``coco/<split>.json``.

``images`` (id = photo id, file_name, width, height, license id, rights_holder, date), ``categories``
(id = label id, name, and the lineage kingdom..genus plus specific_epithet, as in iNat2021; the same
list in every file so ids agree across splits), ``annotations`` (id = image id = photo id,
category_id) and ``licenses`` (id, name, url). Written as a stream, one index batch at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from inat_assets.dwca.convert import sql_string
from inat_assets.dwca.fetch_list import LICENSE_CODES
from inat_assets.storage import atomic_path
from inat_assets.training.exports import extension, rows_of, split_names
from inat_assets.training.exports.imagefolder import label_folder

LICENSE_IDS = {code: i + 1 for i, code in enumerate(LICENSE_CODES)}
_LICENSE_URLS = {
    "CC0": "https://creativecommons.org/publicdomain/zero/1.0/",
    **{c: f"https://creativecommons.org/licenses/{c[3:].lower()}/4.0/" for c in LICENSE_CODES if c != "CC0"},
}


def _file_name(row: dict, imagefolder: bool) -> str:
    if imagefolder and row["split"] in ("train", "val", "test"):
        return f"imagefolder/{row['split']}/{label_folder(row['label'])}/{row['photo_id']}.{extension(row['path'])}"
    return row["path"]


def _categories(con: duckdb.DuckDBPyConnection, index: Path) -> list[dict]:
    rows = con.execute(
        f"""SELECT label_id, label, any_value(kingdom), any_value(phylum), any_value("class"), any_value("order"),
                   any_value(family), any_value(genus), any_value(species)
            FROM read_parquet({sql_string(index)}) GROUP BY label_id, label ORDER BY label_id"""
    ).fetchall()
    categories = []
    for label_id, label, kingdom, phylum, class_, order, family, genus, species in rows:
        epithet = species.split(" ", 1)[1] if species and " " in species else None
        categories.append({
            "id": int(label_id), "name": label, "common_name": None, "supercategory": kingdom,
            "kingdom": kingdom, "phylum": phylum, "class": class_, "order": order, "family": family,
            "genus": genus, "specific_epithet": epithet, "image_dir_name": label_folder(label),
        })  # fmt: skip
    return categories


def write_coco(con: duckdb.DuckDBPyConnection, index: Path, out_dir: Path, *, imagefolder: bool, has_mini: bool) -> list[Path]:
    categories = json.dumps(_categories(con, index), ensure_ascii=False)
    licenses = json.dumps([{"id": i, "name": code, "url": _LICENSE_URLS[code]} for code, i in LICENSE_IDS.items()])
    written = []
    for split in split_names(has_mini):
        final = out_dir / "coco" / f"{split}.json"
        with atomic_path(final) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write('{"info": ' + json.dumps({"description": f"iNaturalist photos, split {split}", "split": split}))
            fh.write(', "images": [')
            for i, row in enumerate(rows_of(index, split)):
                image = {
                    "id": row["photo_id"], "file_name": _file_name(row, imagefolder), "width": row["width"],
                    "height": row["height"], "license": LICENSE_IDS.get(row["license"]),
                    "rights_holder": row["rights_holder"], "date": row["event_date"],
                    "latitude": row["latitude"], "longitude": row["longitude"],
                    "location_uncertainty": row["location_uncertainty"], "observation_id": row["observation_id"],
                }  # fmt: skip
                fh.write(("," if i else "") + json.dumps(image, default=str, ensure_ascii=False))
            fh.write('], "categories": ' + categories + ', "annotations": [')
            for i, row in enumerate(rows_of(index, split)):
                annotation = {"id": row["photo_id"], "image_id": row["photo_id"], "category_id": row["label_id"]}
                fh.write(("," if i else "") + json.dumps(annotation))
            fh.write('], "licenses": ' + licenses + "}")
        written.append(final)
    return written
