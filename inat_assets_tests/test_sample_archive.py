"""The sample-archive generator: layouts, quirks, exact counts, meta.xml, determinism, real rows.

Everything is checked by reading the zip back with Python's csv module (plus a tiny tokenizer where
``""`` must be told apart from a missing value), never by trusting the generator's own numbers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from inat_assets.testing import sample
from inat_assets.testing.sample import (
    BUNDLED_SAMPLE,
    BUNDLED_SAMPLE_SPEC,
    LICENSE_CODES,
    MEDIA_COLUMNS,
    OBSERVATION_COLUMNS_45,
    OBSERVATION_COLUMNS_48,
    SampleArchiveInfo,
    SampleSpec,
    archive_from_observations_csv,
    csv_field,
    license_url,
    quirk_tags,
    ruby_float,
    write_sample_archive,
)

REAL_ROWS = Path(__file__).parent / "fixtures" / "real_observations_2022.csv"
DWC_TEXT = "{http://rs.tdwg.org/dwc/text/}"
PHOTO_URL = re.compile(
    r"^https://(inaturalist-open-data\.s3\.amazonaws\.com|static\.inaturalist\.org)/photos/(\d+)/original\.(jpg|jpeg|JPG|png)$"
)
SOUND_URL = re.compile(r"^https://static\.inaturalist\.org/sounds/(\d+)\.mp3$")
LICENSE_BY_URL = {license_url(c, https=h): c for c in LICENSE_CODES for h in (False, True)}


# ---- reading an archive back ------------------------------------------------------------------


@dataclass
class Parsed:
    header: list[str]
    valid: list[dict[str, str]]
    malformed: list[list[str]]


def member(path: Path, name: str) -> str:
    with zipfile.ZipFile(path) as zf:
        return zf.read(name).decode("utf-8")


def parse(text: str, id_columns: tuple[str, ...]) -> Parsed:
    """Valid rows have the header's field count and integer ids; everything else is malformed."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    valid, malformed = [], []
    for values in reader:
        row = dict(zip(header, values, strict=False))
        if len(values) == len(header) and all(row[c].isdigit() for c in id_columns):
            valid.append(row)
        else:
            malformed.append(values)
    return Parsed(header, valid, malformed)


def raw_fields(text: str) -> list[list[tuple[bool, str]]]:
    """Records as (was_quoted, value) pairs, so ``""`` (empty string) differs from nothing (missing)."""
    records, record, i = [], [], 0
    while i < len(text):
        if text[i] == '"':
            j, parts = i + 1, []
            while True:
                k = text.index('"', j)
                if text.startswith('""', k):
                    parts.append(text[j : k + 1])
                    j = k + 2
                else:
                    parts.append(text[j:k])
                    i = k + 1
                    break
            record.append((True, "".join(parts)))
        else:
            k = i
            while k < len(text) and text[k] not in ",\n":
                k += 1
            record.append((False, text[i:k]))
            i = k
        if i < len(text) and text[i] == ",":
            i += 1
        else:
            records.append(record)
            record = []
            i += 1
    return records


@dataclass
class Archive:
    info: SampleArchiveInfo
    observations: Parsed
    media: Parsed
    observations_text: str
    media_text: str


def read_archive(info: SampleArchiveInfo) -> Archive:
    obs_text, media_text = member(info.path, "observations.csv"), member(info.path, "media.csv")
    return Archive(
        info,
        parse(obs_text, ("id",)),
        parse(media_text, ("id", "catalogNumber")),
        obs_text,
        media_text,
    )


def assert_counts_match(archive: Archive) -> None:
    """Every count in the info equals what csv parsing of the zip finds."""
    info, obs, media = archive.info, archive.observations, archive.media
    assert tuple(obs.header) == info.observation_columns
    assert tuple(media.header) == MEDIA_COLUMNS
    assert len(obs.valid) == info.observations_valid
    assert len(obs.malformed) == info.observations_malformed
    assert len(media.valid) == info.media_valid
    assert len(media.malformed) == info.media_malformed

    obs_by_id = {int(r["id"]): r for r in obs.valid}
    assert len(obs_by_id) == len(obs.valid), "observation ids must be unique"
    photos = [r for r in media.valid if r["type"] == "StillImage"]
    sounds = [r for r in media.valid if r["type"] == "Sound"]
    assert len(photos) == info.still_images
    assert len(sounds) == info.sounds
    assert len(photos) + len(sounds) == len(media.valid)
    orphans = [r for r in photos if int(r["id"]) not in obs_by_id]
    assert len(orphans) == info.orphan_media
    assert tuple(int(r["id"]) for r in orphans) == info.orphan_observation_ids
    joined = [(r, obs_by_id[int(r["id"])]) for r in photos if int(r["id"]) in obs_by_id]
    by_kingdom = Counter(o["kingdom"] for _, o in joined)
    assert {k: v for k, v in info.photos_by_kingdom.items() if v} == dict(by_kingdom)
    by_license = Counter(LICENSE_BY_URL[m["license"]] for m, _ in joined)
    assert {k: v for k, v in info.photos_by_license.items() if v} == dict(by_license)
    assert dict(info.photos_by_host) == dict(Counter(r["identifier"].split("/")[2] for r in photos))
    photo_ids = {r["catalogNumber"] for r in photos}
    assert len(photo_ids) == len(photos), "photo ids must be unique across StillImage rows"
    assert sum(r["catalogNumber"] in photo_ids for r in sounds) == info.sound_ids_colliding_with_photos
    assert info.min_observation_id == min(obs_by_id)
    assert info.max_observation_id == max(obs_by_id)

    # The rejected lines are single records, reported verbatim.
    for line in info.malformed_observation_lines:
        assert f"\n{line}\n" in archive.observations_text
        assert len(list(csv.reader([line]))) == 1
    for line in info.malformed_media_lines:
        assert f"\n{line}\n" in archive.media_text

    # The quirk ids are the first three rows (file order) that really show the quirk.
    first: dict[str, list[int]] = {}
    for row in obs.valid:
        if int(row["id"]) == info.long_remark_observation_id:
            continue
        for tag in quirk_tags(row):
            if len(first.setdefault(tag, [])) < 3:
                first[tag].append(int(row["id"]))
    assert {k: tuple(v) for k, v in first.items()} == dict(info.quirk_observation_ids)


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return read_archive(write_sample_archive(tmp_path_factory.mktemp("default") / "dwca.zip"))


@pytest.fixture(scope="module")
def layout45(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    spec = SampleSpec(
        observations=120, layout="45", seed=5, extra_columns=("county", "publicLatitude", "foo")
    )
    return read_archive(write_sample_archive(tmp_path_factory.mktemp("l45") / "dwca.zip", spec))


# ---- tests ------------------------------------------------------------------------------------


def test_ruby_csv_dialect_helpers() -> None:
    assert csv_field(None) == ""
    assert csv_field("") == '""'
    assert csv_field("plain text") == "plain text"
    assert csv_field('Robert "Bob"') == '"Robert ""Bob"""'
    assert csv_field("Smith, John") == '"Smith, John"'
    assert csv_field("two\nlines") == '"two\nlines"'
    assert [ruby_float(x) for x in (5e-05, -7.3e-05, 37.9028158758, 12.0)] == [
        "5.0e-05",
        "-7.3e-05",
        "37.9028158758",
        "12.0",
    ]


def test_columns_per_layout(default: Archive, layout45: Archive) -> None:
    assert len(OBSERVATION_COLUMNS_45) == 45 and len(OBSERVATION_COLUMNS_48) == 48
    header = default.observations.header
    assert tuple(header) == OBSERVATION_COLUMNS_48
    assert header[header.index("publishingCountry") + 1] == "projectId"
    assert header[-2:] == ["vitality", "dynamicProperties"]
    assert tuple(layout45.observations.header) == (*OBSERVATION_COLUMNS_45, "county", "publicLatitude", "foo")
    assert layout45.info.layout == "45"
    row = layout45.observations.valid[0]
    assert row["publicLatitude"] == row["decimalLatitude"]
    assert all(r["foo"] == "" for r in layout45.observations.valid)  # unknown extras are written missing
    # Older exports named the EML file differently.
    assert "metadata.eml.xml" in zipfile.ZipFile(layout45.info.path).namelist()
    assert "eml.xml" in zipfile.ZipFile(default.info.path).namelist()


@pytest.mark.parametrize("name", ["default", "layout45"])
def test_info_counts_equal_csv_parsing(name: str, request: pytest.FixtureRequest) -> None:
    archive: Archive = request.getfixturevalue(name)
    assert_counts_match(archive)
    assert archive.info.observations_malformed == 3
    assert archive.info.media_malformed == 2
    assert archive.info.orphan_media == 3
    # One line of each kind: too few columns, too many, a non-integer id / catalogNumber.
    width = len(archive.observations.header)
    bad = archive.observations.malformed
    assert sorted(len(v) < width for v in bad) == [False, False, True]
    assert sum(len(v) > width for v in bad) == 1 and sum(v[0] == "abc" for v in bad) == 1
    bad_media = archive.media.malformed
    assert sum(len(v) < len(MEDIA_COLUMNS) for v in bad_media) == 1
    assert sum(len(v) == len(MEDIA_COLUMNS) and not v[-1].isdigit() for v in bad_media) == 1


def test_chunk_boundaries_and_template_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks and a small pool exercise the paths a 2M-row build takes.
    monkeypatch.setattr(sample, "_CHUNK", 7)
    monkeypatch.setattr(sample, "_POOL", 40)
    monkeypatch.setattr(sample, "_ZIP64_FROM", 0)  # the ZIP64 members a >2 GiB build writes
    spec = SampleSpec(observations=333, seed=11, long_remark_bytes=5_000, orphan_media=5)
    archive = read_archive(write_sample_archive(tmp_path / "dwca.zip", spec))
    assert_counts_match(archive)
    assert archive.info.orphan_media == 5
    with zipfile.ZipFile(archive.info.path) as zf:
        assert zf.testzip() is None


def test_observation_quirks(default: Archive) -> None:
    rows = default.observations.valid
    text = default.observations_text

    def values(column: str) -> set[str]:
        return {r[column] for r in rows}

    names = values("recordedBy") | values("rightsHolder")
    assert any("," in n for n in names) and any('"' in n for n in names) and any("\n" in n for n in names)
    assert '"Robert ""Bob"" O\'Neil"' in text  # doubled quotes, Ruby style
    assert any(re.search(r"[\u4e00-\u9fff]", n) for n in names)  # CJK
    assert any(re.search(r"[áéíóúñüöø]", n) for n in names)  # accented letters
    remarks = [r["occurrenceRemarks"] for r in rows]
    assert any(len(r) > 1000 and "<" in r for r in remarks)  # long HTML
    assert any('<a href="' in r for r in remarks)
    dates = values("eventDate")
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d", d) for d in dates)
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", d) for d in dates)
    assert "NA" in values("countryCode")
    coordinates = values("decimalLatitude") | values("decimalLongitude")
    assert any(re.fullmatch(r"-?\d\.\d+e-\d\d", c) for c in coordinates)
    licenses = values("license")
    assert any(u.startswith("http://") for u in licenses) and any(u.startswith("https://") for u in licenses)
    assert {LICENSE_BY_URL[u] for u in licenses} <= {"CC0", "CC-BY", "CC-BY-NC"}
    assert values("captive") == {"wild", "cultivated"}
    assert any("|" in v for v in values("reproductiveCondition"))
    assert any("|" in v for v in values("projectId"))
    dynamic = [r["dynamicProperties"] for r in rows if r["dynamicProperties"]]
    assert dynamic and all(isinstance(json.loads(d), dict) for d in dynamic)
    assert '""evidenceOfPresence""' in text or '""flowersAndFruits""' in text  # JSON quotes doubled
    assert {"species", "genus", "subspecies"} <= values("taxonRank")


def test_empty_string_and_missing_share_columns(default: Archive) -> None:
    records = raw_fields(default.observations_text)
    header = [v for _, v in records[0]]
    for column in (
        "occurrenceRemarks",
        "identificationRemarks",
        "reproductiveCondition",
        "dynamicProperties",
    ):
        i = header.index(column)
        kinds = {
            ("empty" if quoted else "missing")
            for quoted, v in (r[i] for r in records[1:] if len(r) == len(header))
            if v == ""
        }
        assert kinds == {"empty", "missing"}, column
    assert "\r" not in default.observations_text and default.observations_text.endswith("\n")


def test_taxonomy_is_consistent(default: Archive) -> None:
    rows = default.observations.valid
    kingdoms = Counter(r["kingdom"] for r in rows)
    assert {"Plantae", "Animalia", "Fungi"} <= set(kingdoms)
    assert 0.35 <= kingdoms["Plantae"] / len(rows) <= 0.45
    phyla = {"Plantae": {"Tracheophyta", "Bryophyta"}, "Fungi": {"Basidiomycota", "Ascomycota"}}
    for r in rows:
        assert r["phylum"] in phyla.get(r["kingdom"], {r["phylum"]})
        if r["taxonRank"] in ("species", "subspecies", "variety", "genus"):
            assert r["scientificName"].split()[0] == r["genus"]
        else:
            assert r["genus"] == ""


def test_ids_unique_ascending_ish_and_not_contiguous(default: Archive) -> None:
    ids = [int(r["id"]) for r in default.observations.valid]
    assert len(set(ids)) == len(ids)
    assert min(b - a for a, b in pairwise(sorted(ids))) >= 2  # id + 1 is never a row
    descents = sum(b < a for a, b in pairwise(ids))
    assert descents <= len(ids) // 100 + 1
    assert all(
        r["catalogNumber"] == r["id"] and r["references"].endswith("/" + r["id"])
        for r in default.observations.valid
    )


def test_media_rows(default: Archive) -> None:
    media = default.media.valid
    photos = [r for r in media if r["type"] == "StillImage"]
    sounds = [r for r in media if r["type"] == "Sound"]
    assert photos and sounds
    hosts, extensions = set(), set()
    for r in photos:
        match = PHOTO_URL.match(r["identifier"])
        assert match, r["identifier"]
        host, photo_id, ext = match.groups()
        assert photo_id == r["catalogNumber"]
        assert r["format"] == ("image/png" if ext == "png" else "image/jpeg")
        assert r["references"] == f"https://www.inaturalist.org/photos/{photo_id}"
        assert r["publisher"] == "iNaturalist"
        hosts.add(host)
        extensions.add(ext)
    assert hosts == {"inaturalist-open-data.s3.amazonaws.com", "static.inaturalist.org"}
    assert extensions == {"jpg", "jpeg", "JPG", "png"}
    for r in sounds:
        match = SOUND_URL.match(r["identifier"])
        assert match and match.group(1) == r["catalogNumber"] and r["format"] == "audio/mpeg"
    assert {LICENSE_BY_URL[r["license"]] for r in photos} == set(LICENSE_CODES)
    assert default.info.sound_ids_colliding_with_photos > 0
    creators = {r["creator"] for r in photos}
    assert (
        any("\n" in c for c in creators)
        and any('"' in c for c in creators)
        and any("," in c for c in creators)
    )


def test_meta_xml_matches_header(default: Archive, layout45: Archive) -> None:
    for archive in (default, layout45):
        root = ET.fromstring(member(archive.info.path, "meta.xml"))
        assert root.tag == f"{DWC_TEXT}archive"
        assert root.get("metadata") in zipfile.ZipFile(archive.info.path).namelist()
        for element, location, row_type, id_tag, header in (
            (
                root.find(f"{DWC_TEXT}core"),
                "observations.csv",
                "http://rs.tdwg.org/dwc/terms/Occurrence",
                "id",
                archive.observations.header,
            ),
            (
                root.find(f"{DWC_TEXT}extension"),
                "media.csv",
                "http://rs.gbif.org/terms/1.0/Multimedia",
                "coreid",
                archive.media.header,
            ),
        ):
            assert element is not None
            assert element.get("rowType") == row_type
            assert element.get("fieldsTerminatedBy") == ","
            assert element.get("fieldsEnclosedBy") == '"'
            assert element.get("linesTerminatedBy") == "\\n"
            assert element.get("ignoreHeaderLines") == "1"
            assert element.get("encoding") == "UTF-8"
            assert element.findtext(f"{DWC_TEXT}files/{DWC_TEXT}location") == location
            assert element.find(f"{DWC_TEXT}{id_tag}").get("index") == "0"
            fields = {int(f.get("index")): f.get("term") for f in element.findall(f"{DWC_TEXT}field")}
            assert sorted(fields) == list(range(1, len(header)))
            for index, term in fields.items():
                column = header[index]
                expected_tail = {
                    "inaturalistLogin": "nick",
                    "otherCatalogueNumbers": "otherCatalogNumbers",
                }.get(column, column)
                assert term.startswith(("http://", "https://")) and term.rsplit("/", 1)[1] == expected_tail
    core = ET.fromstring(member(default.info.path, "meta.xml")).find(f"{DWC_TEXT}core")
    terms = {f.get("term") for f in core.findall(f"{DWC_TEXT}field")}
    assert {
        "http://rs.gbif.org/terms/1.0/projectId",
        "http://purl.org/dc/terms/license",
        "http://rs.tdwg.org/dwc/terms/dynamicProperties",
    } <= terms
    ET.fromstring(member(default.info.path, "eml.xml"))  # well-formed


def test_deterministic_by_seed(tmp_path: Path) -> None:
    spec = SampleSpec(observations=60, seed=42)
    a = write_sample_archive(tmp_path / "a.zip", spec)
    b = write_sample_archive(tmp_path / "b.zip", spec)
    c = write_sample_archive(tmp_path / "c.zip", SampleSpec(observations=60, seed=43))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a.path, b.path)]
    assert digest[0] == digest[1]
    assert (a.observations_valid, a.quirk_observation_ids) == (b.observations_valid, b.quirk_observation_ids)
    assert member(a.path, "observations.csv") != member(c.path, "observations.csv")


def test_without_malformed_lines_and_orphans(tmp_path: Path) -> None:
    info = write_sample_archive(
        tmp_path / "clean.zip", SampleSpec(observations=50, malformed_lines=False, orphan_media=0)
    )
    archive = read_archive(info)
    assert_counts_match(archive)
    assert (info.observations_malformed, info.media_malformed, info.orphan_media) == (0, 0, 0)
    assert not archive.observations.malformed and not archive.media.malformed


def test_long_remark_exceeds_the_requested_size(tmp_path: Path) -> None:
    info = write_sample_archive(tmp_path / "long.zip", SampleSpec(observations=20, long_remark_bytes=60_000))
    archive = read_archive(info)
    assert_counts_match(archive)
    row = next(r for r in archive.observations.valid if int(r["id"]) == info.long_remark_observation_id)
    assert len(row["occurrenceRemarks"].encode()) == 60_000
    assert max(len(line) for line in archive.observations_text.split("\n")) > 60_000


def test_archive_from_real_rows(tmp_path: Path) -> None:
    info = archive_from_observations_csv(REAL_ROWS, tmp_path / "real.zip", seed=1, photos_per_observation=2)
    assert member(info.path, "observations.csv").encode() == REAL_ROWS.read_bytes()  # byte for byte
    archive = read_archive(info)
    assert_counts_match(archive)
    assert info.layout == "45" and info.observation_columns == OBSERVATION_COLUMNS_45
    assert (info.observations_valid, info.observations_malformed) == (50, 0)
    assert info.media_valid == info.still_images == 100 and info.orphan_media == 0
    assert {int(r["id"]) for r in archive.media.valid} == {int(r["id"]) for r in archive.observations.valid}
    assert all(PHOTO_URL.match(r["identifier"]) for r in archive.media.valid)
    assert set(info.photos_by_kingdom) == {"Animalia", "Fungi", "Plantae"}
    assert "metadata.eml.xml" in zipfile.ZipFile(info.path).namelist()
    ranged = archive_from_observations_csv(
        REAL_ROWS, tmp_path / "ranged.zip", seed=1, photos_per_observation=(1, 4)
    )
    assert 50 <= ranged.still_images <= 200


def test_bundled_sample_is_current_and_small(tmp_path: Path) -> None:
    assert BUNDLED_SAMPLE.stat().st_size < 200_000
    fresh = write_sample_archive(tmp_path / "fresh.zip", BUNDLED_SAMPLE_SPEC)
    for name in ("meta.xml", "eml.xml", "observations.csv", "media.csv"):
        assert member(BUNDLED_SAMPLE, name) == member(fresh.path, name), f"regenerate {BUNDLED_SAMPLE.name}"
    assert fresh.layout == "48" and fresh.observations_valid == 300


def test_cli_prints_info_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.zip"
    argv = [str(out), "--observations", "40", "--layout", "45", "--seed", "3", "--no-malformed"]
    assert sample.main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(out) and info["layout"] == "45"
    assert info["observations_valid"] == 40 and info["observations_malformed"] == 0
    media = parse(member(out, "media.csv"), ("id", "catalogNumber"))
    assert info["media_valid"] == len(media.valid) and not media.malformed


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="layout"):
        SampleSpec(layout="47")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeat"):
        SampleSpec(extra_columns=("id",))
    with pytest.raises(ValueError, match="observations"):
        SampleSpec(observations=3)
