"""CPU cost of the CSV stream normalizer (inat_assets/dwca/csv_stream.py) next to inflating the member.

    .venv/bin/python bench/csv_stream.py                       # 200k observations, 3 rounds
    .venv/bin/python bench/csv_stream.py --observations 2000000

Builds (or reuses, in --workdir) a sample archive, inflates observations.csv into memory once, then
times with process CPU time (steadier than wall time on a shared machine): inflating the member,
the normalizer on the LF text as published, and on the same text with every line ending CR LF,
and the normalizer followed by the chunker that cuts the stream into whole records (convert.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from inat_assets.dwca.archive import iter_member_bytes
from inat_assets.dwca.convert import CHUNK_BYTES, MAX_LINE_BYTES
from inat_assets.dwca.csv_stream import CsvStreamNormalizer, RecordChunker
from inat_assets.testing.sample import SampleSpec, write_sample_archive


def _cpu(run) -> float:
    started = time.process_time()
    run()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-data"), help="archive cache (not in git)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    archive = args.workdir / f"bench-{args.observations}.zip"  # the same archive bench/convert.py builds
    if not archive.exists():
        write_sample_archive(archive, SampleSpec(observations=args.observations, seed=1, mean_photos=2.0, malformed_lines=False))
    chunks = list(iter_member_bytes(archive, "observations.csv"))
    crlf = [chunk.replace(b"\n", b"\r\n") for chunk in chunks]
    size = sum(map(len, chunks)) / 1e9
    for round_no in range(1, args.rounds + 1):
        inflate = _cpu(lambda: sum(map(len, iter_member_bytes(archive, "observations.csv"))))
        lf = _cpu(lambda: sum(map(len, CsvStreamNormalizer(MAX_LINE_BYTES).feed(chunks))))
        cr = _cpu(lambda: sum(map(len, CsvStreamNormalizer(MAX_LINE_BYTES).feed(crlf))))
        cut = _cpu(
            lambda: sum(c.size for c in RecordChunker(CHUNK_BYTES, MAX_LINE_BYTES).split(CsvStreamNormalizer(MAX_LINE_BYTES), chunks))
        )
        print(
            f"round {round_no}: {size:.2f} GB  inflate {size / inflate:.2f} GB/s  normalizer LF {size / lf:.2f} GB/s "
            f"({lf / inflate:.0%} of inflating)  CR LF {size / cr:.2f} GB/s  normalizer + chunker LF "
            f"{size / cut:.2f} GB/s (chunker {max(cut - lf, 0) / inflate:.0%} of inflating)",
            flush=True,
        )


if __name__ == "__main__":
    main()
