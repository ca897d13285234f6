"""A small synthetic world for the training engine: observation and media tables, fetch.parquet built
by the real fetch-list engine, tiny real JPEG files and one manifest per batch.

Deterministic for a seed. Contents chosen so every drop reason occurs: subspecies and varieties
(roll up), a hybrid, genus-level observations, NC and SA licences, one exact duplicate (the same
bytes under two photo ids), failed downloads, and batches that can be left out.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from inat_assets.download.manifest import MANIFEST_SCHEMA
from inat_assets.dwca.fetch_list import FetchFilters, build_fetch_list
from inat_assets.testing.mirror import served_bytes

BATCH_SPAN = 100
LICENCE_URLS = {
    "CC0": "http://creativecommons.org/publicdomain/zero/1.0/",
    "CC-BY": "http://creativecommons.org/licenses/by/4.0/",
    "CC-BY-NC": "http://creativecommons.org/licenses/by-nc/4.0/",
    "CC-BY-SA": "https://creativecommons.org/licenses/by-sa/4.0/",
}
GENERA = (("Quercus", "Fagaceae"), ("Acer", "Sapindaceae"), ("Rosa", "Rosaceae"))


@dataclass
class World:
    root: Path
    fetch: Path
    observations: Path
    manifests_dir: Path
    batches: list[str]
    hybrids: int = 0  # usable photos of hybrid observations with an allowed licence
    duplicate_ids: tuple[int, int] = (0, 0)
    failed_ids: list[int] = field(default_factory=list)

    def manifests(self, batches: list[str] | None = None) -> list[Path]:
        return [self.manifests_dir / f"{b}.parquet" for b in (batches or self.batches)]


def _batch(photo_id: int) -> str:
    return f"batch-{photo_id // BATCH_SPAN:06d}"


def make_world(root: Path, *, seed: int = 1, species: int = 9, with_dimensions: bool = True) -> World:
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    obs_rows, media_rows = [], []
    photo_id, obs_id = 1000, 5000
    taxa = []
    for i in range(species):
        genus, family = GENERA[i % len(GENERA)]
        taxa.append((f"{genus} sp{i}", "species", genus, family, 100 + i))
    taxa += [
        ("Quercus sp0 subsp. alba", "subspecies", "Quercus", "Fagaceae", 900),
        ("Acer sp1 var. rubra", "variety", "Acer", "Sapindaceae", 901),
        ("Quercus \u00d7 bebbiana", "hybrid", "Quercus", "Fagaceae", 902),
        ("Rosa", "genus", "Rosa", "Rosaceae", 903),
    ]
    for name, rank, genus, family, taxon_id in taxa:
        observers = rng.randint(2, 6) if rank == "species" else 2
        for u in range(observers):
            login = f"user{rng.randint(1, 12)}" if u else f"user{taxon_id % 7}"
            for _ in range(rng.randint(1, 4)):
                obs_id += 1
                obs_rows.append({
                    "id": obs_id, "occurrenceID": f"https://www.inaturalist.org/observations/{obs_id}",
                    "scientificName": name, "taxonRank": rank, "taxonID": taxon_id, "kingdom": "Plantae",
                    "phylum": "Tracheophyta", "class": "Magnoliopsida", "order": "Fagales", "family": family,
                    "genus": genus, "inaturalistLogin": login, "recordedBy": login.title(),
                    "countryCode": "US", "eventDate": "2023-05-01", "captive": "wild",
                    "decimalLatitude": 45.0 + (obs_id % 100) / 100, "decimalLongitude": -93.0, "coordinateUncertaintyInMeters": 10.0,
                })  # fmt: skip
                for _ in range(rng.randint(1, 3)):
                    photo_id += rng.randint(1, 3)
                    code = rng.choice(["CC0", "CC-BY", "CC-BY", "CC-BY", "CC-BY-NC", "CC-BY-SA"])
                    media_rows.append({
                        "id": obs_id, "type": "StillImage", "format": "image/jpeg",
                        "identifier": f"https://static.example.org/photos/{photo_id}/original.jpg",
                        "license": LICENCE_URLS[code], "catalogNumber": photo_id,
                        "creator": f"Creator {login}", "rightsHolder": f"Holder {login}",
                    })  # fmt: skip
    observations, media = root / "observations.parquet", root / "media.parquet"
    pq.write_table(pa.Table.from_pylist(obs_rows), observations)
    pq.write_table(pa.Table.from_pylist(media_rows), media)
    fetch = root / "fetch.parquet"
    with duckdb.connect() as con:
        build_fetch_list(con, observations, media, fetch, FetchFilters(kingdom=()))
    world = World(root, fetch, observations, root / "manifests", [])
    world.manifests_dir.mkdir()

    licences = {m["catalogNumber"]: m["license"] for m in media_rows}
    hybrid_obs = {o["id"] for o in obs_rows if o["taxonRank"] == "hybrid"}
    ids = [m["catalogNumber"] for m in media_rows]
    allowed_plain = [i for i in ids if licences[i] in (LICENCE_URLS["CC0"], LICENCE_URLS["CC-BY"])]
    # One photo gets the bytes of another (both CC-BY/CC0, both species-level): an exact duplicate.
    species_ids = [m["catalogNumber"] for m in media_rows if m["id"] not in hybrid_obs]
    dup_a, dup_b = [i for i in allowed_plain if i in set(species_ids)][3:5]
    world.duplicate_ids = (dup_a, dup_b)
    world.failed_ids = rng.sample([i for i in ids if i not in (dup_a, dup_b)], 4)
    world.hybrids = sum(1 for m in media_rows if m["id"] in hybrid_obs and m["catalogNumber"] not in world.failed_ids
                        and licences[m["catalogNumber"]] in (LICENCE_URLS["CC0"], LICENCE_URLS["CC-BY"]))  # fmt: skip
    by_batch: dict[str, list[int]] = {}
    for i in ids:
        by_batch.setdefault(_batch(i), []).append(i)
    for batch, batch_ids in sorted(by_batch.items()):
        folder = root / "photos" / batch
        folder.mkdir(parents=True)
        rows = []
        for i in batch_ids:
            url = f"https://static.example.org/photos/{i}/original.jpg"
            if i in world.failed_ids:
                rows.append({"photo_id": i, "url": url, "path": None, "status": "failed_permanent", "http_status": 404,
                             "bytes": None, "sha256": None, "content_type": None, "attempts": 1, "error": "HTTP 404",
                             "seconds": 0.01})  # fmt: skip
                continue
            data = served_bytes(dup_a if i == dup_b else i, image_bytes=400)
            path = folder / f"{i}.jpg"
            path.write_bytes(data)
            rows.append({"photo_id": i, "url": url, "path": str(path), "status": "ok", "http_status": 200,
                         "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "content_type": "image/jpeg",
                         "attempts": 1, "error": None, "seconds": 0.01})  # fmt: skip
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        if with_dimensions:
            table = table.append_column("width", pa.array([8] * len(rows), pa.int32()))
            table = table.append_column("height", pa.array([8] * len(rows), pa.int32()))
        pq.write_table(table, world.manifests_dir / f"{batch}.parquet")
        world.batches.append(batch)
    return world
