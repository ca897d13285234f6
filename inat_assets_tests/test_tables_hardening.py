"""Issue 6, archive and tables: each case that lost rows silently or aborted, pinned down."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import duckdb
import pytest
from dagster import AssetCheckSeverity

from inat_assets.dwca.archive import ArchiveError, inspect_archive, iter_member_bytes
from inat_assets.dwca.convert import MAX_LINE_BYTES, convert_member
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.conftest import metadata, query, run_graph

OBS_HEADER = "id,taxonID,scientificName,kingdom,occurrenceRemarks"
MEDIA_HEADER = "id,type,format,identifier,license,catalogNumber"


def _obs_line(i: int, remark: str = "ok") -> str:
    return f"{i},{100 + i},Quercus robur,Plantae,{remark}"


def _media_line(i: int) -> str:
    return f"{i},StillImage,image/jpeg,https://inaturalist-open-data.s3.amazonaws.com/photos/{i}/original.jpg,CC0,{i}"


def _archive(path: Path, observations: bytes | str, media: bytes | str) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("observations.csv", observations)
        zf.writestr("media.csv", media)
    return path


def _lines(header: str, lines: list[str], ends: list[str]) -> bytes:
    """Header and lines, line i ended by ends[i % len(ends)] (the header by ends[0])."""
    out = [header + ends[0]]
    out += [line + ends[(i + 1) % len(ends)] for i, line in enumerate(lines)]
    return "".join(out).encode()


def _failure(result) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return str(failure.event_specific_data.error)


# CR LF --------------------------------------------------------------------------------------
@pytest.mark.parametrize("read_mode", ["stream", "extract"])
@pytest.mark.parametrize(
    "ends",
    [["\r\n"], ["\r\n", "\n"], ["\n", "\r\n", "\r\n", "\n"]],
    ids=["crlf_everywhere", "crlf_header_only_then_mixed", "mixed_per_line"],
)
def test_crlf_line_endings_convert_every_row(tmp_path: Path, read_mode: str, ends: list[str]) -> None:
    obs = [_obs_line(i, '"say ""hi"""' if i % 7 == 0 else "ok") for i in range(1, 201)]
    media = [_media_line(i) for i in range(1, 151)]
    archive = _archive(tmp_path / "crlf.zip", _lines(OBS_HEADER, obs, ends), _lines(MEDIA_HEADER, media, ends))
    result = run_graph(archive, tmp_path / "data", with_fetch=False, csv_read_mode=read_mode)
    assert metadata(result, "observations_parquet")["dagster/row_count"] == 200
    assert metadata(result, "observations_parquet")["rejected_lines"] == 0
    assert metadata(result, "media_parquet")["dagster/row_count"] == 150
    table = tmp_path / "data" / "observations.parquet"
    # No \r left in the last column, the values are exact.
    assert query(f"SELECT count(*) FROM '{table}' WHERE kingdom <> 'Plantae' OR occurrenceRemarks LIKE '%\r%'") == [(0,)]
    assert query(f"SELECT occurrenceRemarks FROM '{table}' WHERE id = 7") == [('say "hi"',)]


def test_crlf_only_in_the_header_line(tmp_path: Path) -> None:
    obs = (OBS_HEADER + "\r\n" + "\n".join(_obs_line(i) for i in range(1, 51)) + "\n").encode()
    media = (MEDIA_HEADER + "\r\n" + "\n".join(_media_line(i) for i in range(1, 51)) + "\n").encode()
    result = run_graph(_archive(tmp_path / "h.zip", obs, media), tmp_path / "data", with_fetch=False)
    assert metadata(result, "observations_parquet")["dagster/row_count"] == 50
    assert metadata(result, "media_parquet")["dagster/row_count"] == 50


def test_crlf_inside_a_quoted_field_is_data(tmp_path: Path) -> None:
    lines = [_obs_line(1, '"two\r\nlines"'), _obs_line(2, '"carriage\rreturn"'), _obs_line(3)]
    obs = _lines(OBS_HEADER, lines, ["\r\n"])
    result = run_graph(_archive(tmp_path / "q.zip", obs, _lines(MEDIA_HEADER, [_media_line(1)], ["\n"])), tmp_path / "d", with_fetch=False)
    assert metadata(result, "observations_parquet")["dagster/row_count"] == 3
    remarks = dict(query(f"SELECT id, occurrenceRemarks FROM '{tmp_path}/d/observations.parquet'"))
    assert remarks == {1: "two\r\nlines", 2: "carriage\rreturn", 3: "ok"}


def test_crlf_file_with_a_stray_quote_in_an_unquoted_field(tmp_path: Path) -> None:
    lines = [_obs_line(i) for i in range(1, 60)]
    lines[3] = '4,104,Quercus robur,Plan"tae,ok'  # malformed but readable: DuckDB keeps the quote as text
    obs = _lines(OBS_HEADER, lines, ["\r\n"])
    archive = _archive(tmp_path / "stray.zip", obs, _lines(MEDIA_HEADER, [_media_line(1)], ["\r\n"]))
    result = run_graph(archive, tmp_path / "data", with_fetch=False)
    assert metadata(result, "observations_parquet")["dagster/row_count"] == 59
    assert query(f"SELECT kingdom FROM '{tmp_path}/data/observations.parquet' WHERE id = 4") == [('Plan"tae',)]


# Bare CR ------------------------------------------------------------------------------------
@pytest.mark.parametrize("read_mode", ["stream", "extract"])
def test_bare_cr_in_an_unquoted_field_is_rejected_and_the_rest_converts(tmp_path: Path, read_mode: str) -> None:
    lines = [_obs_line(i) for i in range(1, 101)]
    lines[9] = _obs_line(10, "before\rafter")  # line 11 of the file
    lines[99] = _obs_line(100, "at the end\r")  # a bare \r right before the line's \n is a CR LF: fine
    obs = _lines(OBS_HEADER, lines, ["\n"])
    archive = _archive(tmp_path / "cr.zip", obs, _lines(MEDIA_HEADER, [_media_line(1)], ["\n"]))
    result = run_graph(archive, tmp_path / "data", with_fetch=False, csv_read_mode=read_mode)
    assert metadata(result, "observations_parquet")["dagster/row_count"] == 99
    rejects = query(f"SELECT line, byte_offset, reason, raw_line FROM '{tmp_path}/data/rejects/observations.parquet'")
    assert len(rejects) == 1
    line, offset, reason, raw = rejects[0]
    assert line == 11 and offset > 0
    assert "carriage return" in reason
    assert raw.startswith("10,110,Quercus robur")


# Over-long lines ----------------------------------------------------------------------------
@pytest.mark.parametrize(("megabytes", "read_mode"), [(40, "stream"), (100, "extract")])
def test_line_longer_than_the_read_buffer_is_rejected_and_later_line_numbers_hold(
    tmp_path: Path, megabytes: int, read_mode: str
) -> None:
    # Longer than DuckDB's 32 MB read buffer (the case that vanished); deflates to ~0.1 % of that.
    long_remark = "x" * (megabytes << 20)
    lines = [_obs_line(i) for i in range(1, 21)]
    lines[4] = _obs_line(5, long_remark)  # line 6
    lines[14] = "15,not-a-number,Quercus robur,Plantae,ok"  # line 16: a cast error after it
    obs = _lines(OBS_HEADER, lines, ["\n"])
    archive = _archive(tmp_path / "long.zip", obs, _lines(MEDIA_HEADER, [_media_line(1)], ["\n"]))
    result = run_graph(archive, tmp_path / "data", with_fetch=False, csv_read_mode=read_mode)
    assert metadata(result, "observations_parquet")["dagster/row_count"] == 18
    rejects = query(f"SELECT line, reason FROM '{tmp_path}/data/rejects/observations.parquet' ORDER BY line")
    assert [line for line, _ in rejects] == [6, 16]
    assert f"{len(_obs_line(5, long_remark)):,} bytes" in rejects[0][1]
    assert f"maximum line size of {MAX_LINE_BYTES:,}" in rejects[0][1]
    assert "Could not convert" in rejects[1][1]


# Reject share -------------------------------------------------------------------------------
def test_header_column_the_rows_lack_fails_and_keeps_the_previous_table(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_graph(sample_48.path, data, with_fetch=False)
    before = (data / "observations.parquet").read_bytes()
    # The header announces a column that no row has: every line is rejected.
    obs = _lines(OBS_HEADER + ",county", [_obs_line(i) for i in range(1, 101)], ["\n"])
    bad = _archive(tmp_path / "bad.zip", obs, _lines(MEDIA_HEADER, [_media_line(1)], ["\n"]))
    result = run_graph(bad, data, with_fetch=False, raise_on_error=False)
    assert not result.success
    error = _failure(result)
    assert "observations.csv" in error and "100 of 100 lines" in error
    assert "Expected Number of Columns" in error and "observations.failed.parquet" in error
    assert (data / "observations.parquet").read_bytes() == before  # the good table stays
    assert query(f"SELECT count(*) FROM '{data}/rejects/observations.failed.parquet'") == [(100,)]
    assert not list(data.glob(".observations.parquet.*.part"))
    # The next good run replaces the table and removes the failed run's rejects.
    run_graph(sample_48.path, data, with_fetch=False)
    assert not (data / "rejects" / "observations.failed.parquet").exists()


def test_absurd_reject_share_under_a_lower_hard_limit_fails(tmp_path: Path) -> None:
    lines = [_obs_line(i) for i in range(1, 101)]
    for i in range(0, 100, 10):  # 10 % of the lines
        lines[i] = f"{i + 1},x,Quercus robur,Plantae,ok"
    archive = _archive(tmp_path / "a.zip", _lines(OBS_HEADER, lines, ["\n"]), _lines(MEDIA_HEADER, [_media_line(1)], ["\n"]))
    ok = run_graph(archive, tmp_path / "ok", with_fetch=False)  # 10 % < 50 %: converted, the check warns
    evaluation = next(e for e in ok.get_asset_check_evaluations() if e.asset_key.to_user_string() == "observations_parquet" and e.check_name == "rejected_lines_under_share")
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN
    from dagster import materialize

    from inat_assets import definitions
    from inat_assets_tests.conftest import settings_for

    strict = materialize(
        [definitions.dwca_archive, definitions.observations_parquet],
        resources=settings_for(archive, tmp_path / "strict"),
        run_config={"ops": {"observations_parquet": {"config": {"fail_reject_share": 0.05}}}},
        raise_on_error=False,
    )
    assert not strict.success and "10 of 100 lines (10.0%)" in _failure(strict)
    assert not (tmp_path / "strict" / "observations.parquet").exists()


def test_reject_share_check_is_blocking_with_error_above_the_hard_limit() -> None:
    from inat_assets.assets.tables import RejectShareConfig, observations_reject_share, reject_share_severity

    config = RejectShareConfig()
    assert reject_share_severity(0.0005, config) is None
    assert reject_share_severity(0.01, config) == AssetCheckSeverity.WARN  # the demo sample's 1 %
    assert reject_share_severity(0.6, config) == AssetCheckSeverity.ERROR
    spec = next(iter(observations_reject_share.check_specs))
    assert spec.blocking


# Zip faults, BOM, duplicate columns ---------------------------------------------------------
def _lying_zip(path: Path, declared: int) -> Path:
    """A zip whose observations.csv inflates to far more than its directory entries declare."""
    real = ("\n".join([OBS_HEADER] + [_obs_line(i, "y" * 200) for i in range(1, 3001)]) + "\n").encode()
    _archive(path, real, _lines(MEDIA_HEADER, [_media_line(1)], ["\n"]))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("observations.csv")
    size = len(real).to_bytes(4, "little")
    fake = declared.to_bytes(4, "little")
    # Both the local header (offset 22) and the central directory record carry the size.
    data[info.header_offset + 22 : info.header_offset + 26] = fake
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(b"observations.csv")] != b"observations.csv":
        central = data.index(b"PK\x01\x02", central + 4)
    assert data[central + 24 : central + 28] == size
    data[central + 24 : central + 28] = fake
    path.write_bytes(bytes(data))
    return path


def test_zip_member_that_lies_about_its_size_stops_early(tmp_path: Path) -> None:
    lying = _lying_zip(tmp_path / "lying.zip", declared=5000)
    produced = 0
    with pytest.raises(ArchiveError, match=r"lying\.zip:observations\.csv: inflates to more than the 5,000 bytes"):
        for chunk in iter_member_bytes(lying, "observations.csv"):
            produced += len(chunk)
    assert produced <= 5000  # nothing past the declared size was handed on
    result = run_graph(lying, tmp_path / "data", with_fetch=False, raise_on_error=False)
    assert not result.success and "inflates to more than the 5,000 bytes" in _failure(result)


def test_zip_faults_are_archive_errors_naming_archive_and_member(tmp_path: Path) -> None:
    # A declared size smaller than the header line: zipfile itself raised BadZipFile before.
    tiny = _lying_zip(tmp_path / "tiny.zip", declared=10)
    with pytest.raises(ArchiveError, match=r"tiny\.zip:observations\.csv"):
        inspect_archive(tiny)
    # A member cut short: the deflate stream ends early (EOF).
    good = _archive(tmp_path / "good.zip", _lines(OBS_HEADER, [_obs_line(i) for i in range(1, 500)], ["\n"]), MEDIA_HEADER + "\n")
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("observations.csv")
    data = bytearray(good.read_bytes())
    start = info.header_offset + 30 + len(info.filename)
    data[start + 40 : start + info.compress_size] = b"\x00" * (info.compress_size - 40)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"broken\.zip:observations\.csv"):
        for _ in iter_member_bytes(broken, "observations.csv"):
            pass


def test_utf8_bom_in_the_header_is_stripped(tmp_path: Path) -> None:
    obs = b"\xef\xbb\xbf" + _lines(OBS_HEADER, [_obs_line(i) for i in range(1, 11)], ["\r\n"])
    media = b"\xef\xbb\xbf" + _lines(MEDIA_HEADER, [_media_line(i) for i in range(1, 11)], ["\n"])
    archive = _archive(tmp_path / "bom.zip", obs, media)
    assert inspect_archive(archive).observations.columns[0] == "id"
    result = run_graph(archive, tmp_path / "data", with_fetch=False)
    assert metadata(result, "observations_parquet")["dagster/row_count"] == 10
    columns = [c for (c,) in query(f"SELECT column_name FROM (DESCRIBE SELECT * FROM '{tmp_path}/data/observations.parquet')")]
    assert columns == OBS_HEADER.split(",")
    assert query(f"SELECT sum(id) FROM '{tmp_path}/data/media.parquet'") == [(55,)]


def test_duplicated_header_column_is_named(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "dup.zip", OBS_HEADER + ",kingdom\n1,2,x,Plantae,r,Plantae\n", MEDIA_HEADER + "\n")
    with pytest.raises(ArchiveError, match=r"observations\.csv: the header names column\(s\) 'kingdom' more than once"):
        inspect_archive(archive)


# Table metadata -----------------------------------------------------------------------------
def test_table_metadata_has_column_schema_and_one_row_count(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    result = run_graph(sample_48.path, tmp_path / "data", with_fetch=False)
    meta = metadata(result, "observations_parquet")
    assert "rows" not in meta and meta["dagster/row_count"] == sample_48.observations_valid
    schema = {c.name: c.type for c in meta["dagster/column_schema"].columns}
    assert list(schema) == list(sample_48.observation_columns)
    assert schema["id"] == "int64" and schema["decimalLatitude"] == "double" and schema["eventDate"] == "string"


# Killed conversions -------------------------------------------------------------------------
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from inat_assets.storage import run_scratch
    with run_scratch(Path(sys.argv[1]), purpose="test holder") as folder:
        (folder / "observations.csv").write_bytes(b"x" * 100_000)
        (folder / "ready").touch()
        time.sleep(600)
    """
)


def _holder(scratch: Path) -> tuple[subprocess.Popen, Path]:
    before = set(scratch.iterdir()) if scratch.exists() else set()
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(scratch)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = [p for p in (set(scratch.iterdir()) if scratch.exists() else set()) - before if (p / "ready").exists()]
        if new:
            return child, new[0]
        time.sleep(0.05)
    child.kill()
    raise AssertionError("the holder process did not start")


def test_killed_conversion_scratch_is_removed_and_a_live_one_is_kept(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    data = tmp_path / "data"
    scratch = data / "tmp" / "convert"
    dead, dead_folder = _holder(scratch)
    live, live_folder = _holder(scratch)
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait(10)
        os.mkfifo(dead_folder / "media.csv")  # a stream-mode run's pipe
        data.mkdir(exist_ok=True)
        stale_part = data / ".observations.parquet.abc123.part"
        stale_part.write_bytes(b"partial")
        old_layout = scratch / "observations-0123abcd.csv"  # what a killed run of the previous version left
        old_layout.write_bytes(b"y" * 5000)
        messages: list[str] = []
        with duckdb.connect() as con:
            result = convert_member(
                con, sample_48.path, inspect_archive(sample_48.path).observations, data / "observations.parquet",
                data / "rejects" / "observations.parquet", scratch, read_mode="extract", log=messages.append,
            )  # fmt: skip
        assert result.rows == sample_48.observations_valid
        assert not dead_folder.exists() and not stale_part.exists()
        assert (live_folder / "observations.csv").stat().st_size == 100_000  # a live run's scratch is untouched
        removed = [m for m in messages if m.startswith(f"removed {dead_folder} (")]
        assert len(removed) == 1  # the CSV, the pipe and the dead run's lock file: 100,000 bytes and the lock's few
        assert 100_000 < int(removed[0].split("(")[1].split(" bytes")[0].replace(",", "")) < 101_000
        assert f"removed {stale_part} (7 bytes), left by a conversion that did not finish" in messages
        assert f"removed {old_layout} (5,000 bytes), left by a conversion that did not finish" in messages
        # And the run's own scratch folders are gone after it.
        assert sorted(p.name for p in scratch.iterdir() if p.is_dir()) == [live_folder.name]
    finally:
        live.kill()
        live.wait(10)


def test_crlf_normalizer_gives_the_same_stream_whatever_the_chunk_boundaries() -> None:
    """CR LF, bare CR, quoted CR LF and an over-long line, cut into chunks of every size from 1 byte."""
    from inat_assets.dwca.csv_stream import CsvStreamNormalizer

    text = b'id,b\r\n1,"x\r\ny"\r\n2,a\rb\n3,' + b"z" * 300 + b'\r\n4,"q""\r"\r\n5,q\r'
    expected = b'id,b\n1,"x\r\ny"\n2,a\xffb\n3,' + b"z" * 162 + b'\n4,"q""\r"\n5,q\xff'

    def normalize(size: int) -> tuple[bytes, list, int]:
        normalizer = CsvStreamNormalizer(100)
        out = b"".join(normalizer.feed(text[i : i + size] for i in range(0, len(text), size)))
        return out, normalizer.events, normalizer.crlf_normalized

    reference = normalize(len(text))
    assert reference[0] == expected and reference[2] == 4
    assert [(e.offset, e.reason.split(" ")[0]) for e in reference[1]] == [(17, "carriage"), (20, "line"), (197, "carriage")]
    for size in (1, 2, 3, 5, 8, 13, 64):
        assert normalize(size) == reference, size


@pytest.mark.parametrize("records", [0, 1, 7, 400, 2000])
def test_record_chunks_shrink_at_the_end_and_stay_within_max_chunks(
    records: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last chunks take a quarter of what remains each, whole records only, never more than max_chunks."""
    from inat_assets.dwca.csv_stream import CsvStreamNormalizer, RecordChunker

    monkeypatch.setattr(RecordChunker, "TAIL_MIN_BYTES", 64)
    header = b"id,remarks\n"
    body = b"".join(b'%d,"line\nwith a quoted newline %d"\n' % (i, i) if i % 3 else b"%d,plain\n" % i for i in range(records))
    stream = header + body
    pieces = [stream[i : i + 97] for i in range(0, len(stream), 97)]
    chunker = RecordChunker(2000, 10_000, expected_bytes=len(stream))
    chunks = list(chunker.split(CsvStreamNormalizer(10_000), pieces))
    assert b"".join(b"".join(c.views()) for c in chunks) == body
    assert [c.index for c in chunks] == list(range(len(chunks))) and len(chunks) <= chunker.max_chunks()
    for chunk in chunks:  # each chunk ends a record: an even number of quotes and a final \n
        data = b"".join(chunk.views())
        assert data.endswith(b"\n") and data.count(b'"') % 2 == 0
    sizes = [c.size for c in chunks]
    if len(body) > 8 * 2000:
        assert sizes[0] >= 2000 and min(sizes[:-1]) < 2000 // 4  # full chunks first, a shrinking tail after
        tail = sizes[sizes.index(next(s for s in sizes if s < 2000)) : -1]
        assert all(later <= earlier + 60 for earlier, later in itertools.pairwise(tail))  # shrinks (records vary)


# Chunked conversion ---------------------------------------------------------------------------
def _convert(archive: Path, data: Path, read_mode: str, table: str = "observations") -> tuple[object, list]:
    info = inspect_archive(archive)
    messages: list[str] = []
    with duckdb.connect() as con:
        result = convert_member(
            con, archive, getattr(info, table), data / f"{table}.parquet", data / "rejects" / f"{table}.parquet",
            data / "tmp", read_mode=read_mode, log=messages.append,  # type: ignore[arg-type]
        )  # fmt: skip
    return result, messages


@pytest.mark.parametrize("read_mode", ["stream", "extract"])
def test_chunked_member_keeps_every_row_and_the_real_line_numbers(
    tmp_path: Path, read_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of ~300 bytes: quoted newlines at and around every cut, rejects in many chunks."""
    import inat_assets.dwca.convert as convert

    monkeypatch.setattr(convert, "MAX_LINE_BYTES", 2000)
    monkeypatch.setattr(convert, "CHUNK_BYTES", 300)
    lines, bad = [], {}
    for i in range(1, 401):
        if i % 37 == 0:
            lines.append(f"{i},not-a-number,Quercus robur,Plantae,ok")  # a cast error
            bad[i] = "Could not convert"
        elif i % 53 == 0:
            lines.append(f"{i},{100 + i},Quercus robur,Plantae")  # a missing column
            bad[i] = "Expected Number of Columns"
        elif i % 71 == 0:
            lines.append(_obs_line(i, "bare\rcr"))
            bad[i] = "carriage return"
        elif i == 250:
            lines.append(_obs_line(i, "y" * 5000))  # over MAX_LINE_BYTES
            bad[i] = "maximum line size"
        elif i % 3 == 0:
            lines.append(_obs_line(i, f'"two\nlines, {i}"'))  # a quoted newline, often across a cut
        else:
            lines.append(_obs_line(i, '"say ""hi"""'))
    text = _lines(OBS_HEADER, lines, ["\n"])
    archive = _archive(tmp_path / "chunks.zip", text, _lines(MEDIA_HEADER, [_media_line(1)], ["\n"]))
    result, messages = _convert(archive, tmp_path / "data", read_mode)
    assert result.rows == 400 - len(bad) and result.rejected_lines == len(bad)  # type: ignore[attr-defined]
    assert any("up to" in m and "chunk(s)" in m for m in messages)
    got = dict(query(f"SELECT id, occurrenceRemarks FROM '{tmp_path}/data/observations.parquet'"))
    assert got[3] == "two\nlines, 3" and got[4] == 'say "hi"' and len(got) == 400 - len(bad)
    # Each reject's line is the line the record starts on in the file, counting every \n.
    long_line = _obs_line(250, "y" * 5000).encode()
    normalized = text.replace(b"\r", b"\xff").replace(long_line, long_line[: 2000 + 64])  # what DuckDB read
    starts = {int(line.split(b",", 1)[0]): n + 1 for n, line in enumerate(normalized.split(b"\n")) if line[:1].isdigit()}
    rejects = query(f"SELECT line, byte_offset, reason, raw_line FROM '{tmp_path}/data/rejects/observations.parquet' ORDER BY line")
    assert [(line, int(raw.split(",")[0])) for line, _, _, raw in rejects] == sorted((starts[i], i) for i in bad)
    for _line, offset, reason, raw in rejects:
        identifier = int(raw.split(",")[0])
        assert bad[identifier] in reason, (identifier, reason)
        assert normalized[offset - 1 :].startswith(f"{identifier},".encode())  # offset: the line's start + 1


@pytest.mark.parametrize("read_mode", ["stream", "extract"])
def test_chunked_member_of_a_damaged_archive_is_an_archive_error(
    sample_48: SampleArchiveInfo, tmp_path: Path, read_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inat_assets.dwca.convert as convert

    monkeypatch.setattr(convert, "CHUNK_BYTES", 4096)  # many pipes, most never fed when inflating fails
    archive = _lying_zip(tmp_path / "lying.zip", declared=200_000)
    with pytest.raises(ArchiveError, match="inflates to more than the 200,000 bytes"):
        _convert(archive, tmp_path / "data", read_mode)
    assert not (tmp_path / "data" / "observations.parquet").exists()
    assert not [p for p in (tmp_path / "data" / "tmp").iterdir() if p.is_dir()]  # no run folder, no pipe left


def test_stray_quote_before_a_cut_loses_no_line_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An odd quote count would make every later \\n look quoted; the chunker resyncs after MAX_LINE_BYTES."""
    import inat_assets.dwca.convert as convert

    monkeypatch.setattr(convert, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(convert, "CHUNK_BYTES", 500)
    lines = [_obs_line(i) for i in range(1, 301)]
    lines[9] = '10,110,Quercus robur,Plantae,ok"'  # an odd quote at a field's end (malformed)
    archive = _archive(tmp_path / "stray.zip", _lines(OBS_HEADER, lines, ["\n"]), _lines(MEDIA_HEADER, [_media_line(1)], ["\n"]))
    result, messages = _convert(archive, tmp_path / "data", "stream")
    assert any("quote count went odd" in m for m in messages)
    ids = {i for (i,) in query(f"SELECT id FROM '{tmp_path}/data/observations.parquet'")}
    raw = " ".join(r for (r,) in query(f"SELECT raw_line FROM '{tmp_path}/data/rejects/observations.parquet'"))
    missing = [i for i in range(1, 301) if i not in ids and f"{i},{100 + i}," not in raw]
    assert missing == []  # every line is a row or in the rejects, none vanished
    assert result.rows + result.rejected_lines <= 300  # type: ignore[attr-defined]
