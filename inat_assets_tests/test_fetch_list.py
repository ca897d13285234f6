"""tables -> fetch.parquet: the photo list, its filters, its metadata and checks."""

from __future__ import annotations

import zipfile
from pathlib import Path

import duckdb
import pytest

from inat_assets.assets.fetch_list import FETCH_LIST_SCHEMA, fetch_metadata
from inat_assets.dwca.fetch_list import (
    FetchFilters,
    FetchListError,
    QueryWatchdog,
    build_fetch_list,
    guarded_query,
    normalize_licenses,
    validate_where,
)
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.conftest import checks, fetch_path, metadata, query, run_graph


@pytest.fixture(scope="module")
def tables_48(sample_48: SampleArchiveInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("tables48")
    run_graph(sample_48.path, data, with_fetch=False)
    return data


def _fetch(sample: SampleArchiveInfo, data: Path, **config: object) -> dict:
    result = run_graph(sample.path, data, fetch_config=config)
    return {"meta": metadata(result, "plants/fetch_parquet"), "checks": checks(result)}


def test_default_fetch_list_is_plantae_still_images(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    out = _fetch(sample_48, tmp_path)
    meta = out["meta"]
    assert meta["dagster/row_count"] == sample_48.photos_by_kingdom["Plantae"] > 0
    assert meta["orphan_media"] == sample_48.orphan_media > 0
    assert meta["sounds_and_other_media"] == sample_48.sounds > 0
    assert "| family | photos |" in meta["top_families"] and "| license | photos |" in meta["licenses"]
    assert out["checks"][("plants/fetch_parquet", "unique_photo_ids_with_http_urls")] is True
    fetch = f"'{fetch_path(tmp_path)}'"
    columns = [r[0] for r in query(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {fetch})")]
    for column in ("photo_id", "observation_id", "url", "format", "license", "rights_holder", "creator",
                   "scientific_name", "taxon_id", "taxon_rank", "kingdom", "phylum", "class", "order",
                   "family", "genus", "country_code", "event_date"):  # fmt: skip
        assert column in columns
    # The schema shown in the UI (dagster/column_schema) is the file's, name for name and type for type.
    described = query(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {fetch})")
    assert described == [(c.name, c.type) for c in FETCH_LIST_SCHEMA.columns]
    assert meta["dagster/column_schema"] == FETCH_LIST_SCHEMA and "rows" not in meta
    ids = [r[0] for r in query(f"SELECT photo_id FROM {fetch}")]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert query(f"SELECT DISTINCT kingdom FROM {fetch}") == [("Plantae",)]
    # No sound ever, even where a sound's id equals a photo's id.
    assert query(f"SELECT count(*) FROM {fetch} WHERE url LIKE '%/sounds/%' OR format NOT LIKE 'image/%'") == [(0,)]
    licenses = {r[0] for r in query(f"SELECT DISTINCT license FROM {fetch}")}
    assert licenses <= {"CC0", "CC-BY", "CC-BY-NC", "CC-BY-SA", "CC-BY-ND", "CC-BY-NC-SA", "CC-BY-NC-ND"}
    # Row groups are small enough to read one batch of ids without the whole file.
    groups = query(f"SELECT count(DISTINCT row_group_id) FROM parquet_metadata({fetch})")[0][0]
    assert groups >= 1


def test_all_kingdoms_and_the_real_rows(real_archive: SampleArchiveInfo, tmp_path: Path) -> None:
    meta = _fetch(real_archive, tmp_path, kingdom=[])["meta"]
    assert meta["dagster/row_count"] == sum(real_archive.photos_by_kingdom.values())
    assert meta["observations"] == 50


def test_filters_combine(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    meta = _fetch(
        sample_48,
        tmp_path,
        kingdom=[],
        license=["cc-by", "http://creativecommons.org/publicdomain/zero/1.0/"],
        photo_size="medium",
    )["meta"]
    expected = sample_48.photos_by_license.get("CC-BY", 0) + sample_48.photos_by_license.get("CC0", 0)
    assert meta["dagster/row_count"] == expected > 0
    urls = [r[0] for r in query(f"SELECT url FROM '{fetch_path(tmp_path)}'")]
    assert all("/medium." in u and "/original." not in u for u in urls)
    assert {r[0] for r in query(f"SELECT DISTINCT license FROM '{fetch_path(tmp_path)}'")} == {"CC-BY", "CC0"}


def test_rank_country_captive_date_and_where_filters(sample_48: SampleArchiveInfo, tables_48: Path, tmp_path: Path) -> None:
    obs, media = f"'{tables_48}/observations.parquet'", f"'{tables_48}/media.parquet'"
    base = f"FROM {media} m JOIN {obs} o ON o.id = m.id WHERE m.type = 'StillImage'"
    family = query(f"SELECT o.family, count(*) {base} AND o.kingdom = 'Plantae' GROUP BY ALL ORDER BY 2 DESC LIMIT 1")[0]
    meta = _fetch(sample_48, tmp_path / "a", family=[family[0]])["meta"]
    assert meta["dagster/row_count"] == family[1]
    wild = query(f"SELECT count(*) {base} AND o.kingdom = 'Plantae' AND o.captive = 'wild'")[0][0]
    assert _fetch(sample_48, tmp_path / "b", captive="wild")["meta"]["dagster/row_count"] == wild
    dated = query(
        f"SELECT count(*) {base} AND o.kingdom = 'Plantae' AND left(o.eventDate, 10) BETWEEN '2020-01-01' AND '2022-12-31'"
    )[0][0]
    meta = _fetch(sample_48, tmp_path / "c", event_date_from="2020-01-01", event_date_to="2022-12-31")["meta"]
    assert meta["dagster/row_count"] == dated
    namibia = query(f"SELECT count(*) {base} AND o.countryCode = 'NA'")[0][0]
    assert _fetch(sample_48, tmp_path / "d", kingdom=[], country_code=["NA"])["meta"]["dagster/row_count"] == namibia > 0
    precise = query(f"SELECT count(*) {base} AND o.kingdom = 'Plantae' AND o.coordinateUncertaintyInMeters < 100")[0][0]
    meta = _fetch(sample_48, tmp_path / "e", where="o.coordinateUncertaintyInMeters < 100")["meta"]
    assert meta["dagster/row_count"] == precise


@pytest.mark.parametrize(
    "expression",
    [
        "1=1; DROP TABLE x",
        "1) AS a, (2",
        "1) AS x FROM t WHERE (1",
        "",
        "COPY t TO 'x'",
        "1=1 UNION SELECT 2",
        "(SELECT count(*) FROM read_text('/etc/passwd')) > 0",
        "-- only a comment",
    ],
)
def test_raw_where_must_be_one_expression(expression: str) -> None:
    with pytest.raises(FetchListError, match="where"):
        validate_where(expression)


def test_where_cannot_escape_its_parentheses(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    """`1) OR (true` parses as one expression; pasted back as parsed, the kingdom filter still holds."""
    assert validate_where("1) OR (true") == "(1 OR true)"
    meta = _fetch(sample_48, tmp_path, where="1) OR (true")["meta"]
    assert meta["dagster/row_count"] == sample_48.photos_by_kingdom["Plantae"]
    assert query(f"SELECT DISTINCT kingdom FROM '{fetch_path(tmp_path)}'") == [("Plantae",)]


def test_where_with_unknown_column_fails_clearly(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    result = run_graph(sample_48.path, tmp_path, fetch_config={"where": "o.no_such_column = 1"}, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no_such_column" in str(failure.event_specific_data.error)


def test_bad_filter_values_are_rejected() -> None:
    with duckdb.connect() as con:
        given = ["by-nc-sa", "CC BY", "https://creativecommons.org/licenses/by-nd/4.0/", "CC0 1.0", "CC BY-SA 4.0",
                 "cc-by-nc-nd-4.0", "http://creativecommons.org/licenses/by-nc", "cc0", "CC_BY"]  # fmt: skip
        assert normalize_licenses(con, given) == [
            "CC-BY-NC-SA", "CC-BY", "CC-BY-ND", "CC0", "CC-BY-SA", "CC-BY-NC-ND", "CC-BY-NC", "CC0", "CC-BY",
        ]  # fmt: skip
        with pytest.raises(FetchListError, match="not a Creative Commons"):
            normalize_licenses(con, ["all rights reserved"])


def test_a_photo_listed_twice_is_fetched_once(real_archive: SampleArchiveInfo, tmp_path: Path) -> None:
    """The same photo id under two observations: one row, the lower observation id, counted."""
    with zipfile.ZipFile(real_archive.path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    lines = members["media.csv"].decode().splitlines()
    first = lines[1].split(",")
    photo_id, observation_id = first[-1], int(first[0])
    other = max(int(line.split(",")[0]) for line in lines[1:] if line.split(",")[0].isdigit())
    assert other != observation_id
    duplicate = ",".join([str(other), *first[1:]])
    members["media.csv"] = ("\n".join([*lines, duplicate]) + "\n").encode()
    archive = tmp_path / "dup.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    result = run_graph(archive, tmp_path / "data", fetch_config={"kingdom": []})
    meta = metadata(result, "plants/fetch_parquet")
    assert meta["dagster/row_count"] == sum(real_archive.photos_by_kingdom.values())
    assert meta["duplicate_photo_ids"] == 1
    rows = query(f"SELECT observation_id FROM '{fetch_path(tmp_path / 'data')}' WHERE photo_id = ?", int(photo_id))
    assert rows == [(min(observation_id, other),)]


def _build(tables: Path, output: Path, observations: Path | None = None, **filters: object):
    with duckdb.connect() as con:
        con.execute("SET threads = 2")
        return build_fetch_list(
            con, observations or tables / "observations.parquet", tables / "media.parquet", output,
            FetchFilters(**filters),  # type: ignore[arg-type]
        )


def test_where_trailing_comment_is_accepted(tables_48: Path, tmp_path: Path) -> None:
    assert validate_where("o.coordinateUncertaintyInMeters < 100 -- precise only") == "(o.coordinateUncertaintyInMeters < 100)"
    assert validate_where("1 --") == "1"
    plain = _build(tables_48, tmp_path / "a.parquet", where="o.coordinateUncertaintyInMeters < 100")
    commented = _build(tables_48, tmp_path / "b.parquet", where="o.coordinateUncertaintyInMeters < 100 -- precise only")
    assert commented.rows == plain.rows > 0


def test_where_any_of_a_list_is_not_a_subquery(tables_48: Path, tmp_path: Path) -> None:
    taxa = [r[0] for r in query(f"SELECT DISTINCT taxonID FROM '{tables_48}/observations.parquet' ORDER BY 1 LIMIT 3")]
    by_any = _build(tables_48, tmp_path / "a.parquet", kingdom=(), where=f"o.taxonID = ANY({taxa})")
    by_filter = _build(tables_48, tmp_path / "b.parquet", kingdom=(), taxon_id=taxa)
    assert by_any.rows == by_filter.rows > 0
    # Real subqueries stay refused, also when hidden inside the ANY list.
    for expression in (
        f"o.id = ANY(SELECT id FROM read_parquet('{tables_48}/observations.parquet'))",
        "o.id = ANY([(SELECT 1)])",
        "o.id = ANY(SELECT unnest([1]) FROM read_text('/etc/passwd'))",
    ):
        with pytest.raises(FetchListError, match=r"subquery|single boolean expression"):
            validate_where(expression)


def test_where_nul_byte_in_a_literal_is_refused() -> None:
    with pytest.raises(FetchListError, match="NUL byte"):
        validate_where("o.scientificName = 'Quercus\x00 robur'")


def test_where_runtime_error_is_a_fetch_list_error_naming_the_expression(tables_48: Path, tmp_path: Path) -> None:
    output = tmp_path / "fetch.parquet"
    with pytest.raises(FetchListError) as caught:
        _build(tables_48, output, where="o.scientificName::INTEGER > 0")
    message = str(caught.value)
    assert "o.scientificName::INTEGER > 0" in message and "Conversion Error" in message
    # Neither the generated query nor DuckDB's tuning hints are echoed back.
    assert "LINE" not in message and "SET " not in message and "StillImage" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert not output.exists()


def test_duckdb_out_of_memory_error_does_not_echo_settings() -> None:
    raw = (
        "Out of Memory Error: could not allocate block of size 256.0 KiB (190.7 MiB/190.7 MiB used)\n\n"
        "Possible solutions:\n* Reducing the number of threads (SET threads=X)\n"
        "* Disabling insertion-order preservation (SET preserve_insertion_order=false)"
    )
    with (
        duckdb.connect() as con,
        pytest.raises(FetchListError, match="memory limit") as caught,
        guarded_query(con, FetchFilters(where="o.id > 0"), "writing fetch.parquet"),
    ):
        raise duckdb.OutOfMemoryException(raw)
    assert "SET" not in str(caught.value) and "o.id > 0" in str(caught.value)


def test_where_timeout_stops_the_query(tables_48: Path, tmp_path: Path) -> None:
    # About 5 s of CPU on these 400 observations, almost no memory.
    slow = f"levenshtein({' || '.join(['o.scientificName'] * 80)}, {' || '.join(['m.creator'] * 80)}) > 0"
    output = tmp_path / "fetch.parquet"
    with pytest.raises(FetchListError, match=r"stopped after 0.3 s \(its timeout_seconds\)") as caught:
        _build(tables_48, output, where=slow, timeout_seconds=0.3)
    assert slow in str(caught.value)
    assert not output.exists()


_MEMORY_CHILD = """
import resource, sys
from pathlib import Path
import duckdb
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))  # a runaway child fails here, not the machine
from inat_assets.dwca.fetch_list import FetchFilters, FetchListError, build_fetch_list
tables, output, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with duckdb.connect() as con:
    con.execute("SET memory_limit = '200MB'")
    con.execute("SET threads = 2")
    try:
        build_fetch_list(con, tables / "observations.parquet", tables / "media.parquet", output,
                         FetchFilters(kingdom=(), where=where))
    except FetchListError as exc:
        print("FetchListError:", exc)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + exec, so it would report pytest's own size.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("peak RSS MiB:", int(hwm.split()[1]) // 1024)
"""


@pytest.mark.parametrize(
    "where", ["length(repeat(o.scientificName, 50000000)) > 0", "list_sum(range(100000000)) > 0"]
)
def test_where_memory_stays_near_the_duckdb_limit(tables_48: Path, tmp_path: Path, where: str) -> None:
    """Before: these filters drove RSS to 22 GB and 7 GB under a 200 MB DuckDB limit (values built
    by an expression bypass DuckDB's buffer manager). Functions that build values of a size given by
    an argument are refused now, before any memory is used."""
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(tables_48), str(tmp_path / "f.parquet"), where],
                           capture_output=True, text=True, timeout=120)
    out = child.stdout
    assert child.returncode == 0, child.stderr[-2000:]
    assert "FetchListError:" in out and "builds a value of any size" in out, out + child.stderr[-2000:]
    assert int(out.split("peak RSS MiB:")[1]) < 200 + 512, out
    assert not (tmp_path / "f.parquet").exists()


def test_query_watchdog_interrupts_a_query_over_its_memory_cap(tables_48: Path) -> None:
    """Growth spread over many rows (no single huge value) is stopped by the RSS watchdog."""
    slow = "levenshtein(repeat(o.scientificName, 40), repeat(m.creator, 40)) > 0"  # seconds of CPU
    with duckdb.connect() as con:
        dog = QueryWatchdog(con, timeout_seconds=60, rss_cap=1)  # any process is over 1 byte
        with pytest.raises(duckdb.InterruptException), dog:
            con.execute(
                f"SELECT count(*) FROM '{tables_48}/media.parquet' m JOIN '{tables_48}/observations.parquet' o "
                f"ON o.id = m.id WHERE {slow}"
            ).fetchall()
    assert dog.reason == "memory" and dog.peak_rss > 1


def test_duplicate_observation_ids_keep_one_row_per_photo(tables_48: Path, tmp_path: Path) -> None:
    """Observation rows repeated (with another name) after the originals: one fetch row per photo,
    the first row of each id wins, and the dropped rows are counted in the metadata."""
    source = f"'{tables_48}/observations.parquet'"
    doubled = tmp_path / "observations.parquet"
    repeated = query(f"SELECT count(*) FROM {source} WHERE id % 3 = 0")[0][0]
    query(
        f"COPY (SELECT * FROM {source} UNION ALL "
        f"SELECT * REPLACE ('Duplicatus secundus' AS scientificName) FROM {source} WHERE id % 3 = 0) "
        f"TO '{doubled}' (FORMAT parquet, ROW_GROUP_SIZE 64)"
    )
    clean = _build(tables_48, tmp_path / "clean.parquet", kingdom=())
    result = _build(tables_48, tmp_path / "fetch.parquet", observations=doubled, kingdom=())
    assert repeated > 0 and clean.duplicate_observation_rows == 0
    assert result.rows == clean.rows
    assert result.duplicate_observation_rows == repeated
    assert fetch_metadata(result)["duplicate_observation_rows"] == repeated
    fetch = f"'{tmp_path}/fetch.parquet'"
    assert query(f"SELECT count(*) - count(DISTINCT photo_id) FROM {fetch}") == [(0,)]
    assert query(f"SELECT count(*) FROM {fetch} WHERE scientific_name = 'Duplicatus secundus'") == [(0,)]
