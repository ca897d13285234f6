"""The `inat-assets` command.

`demo` runs the whole graph offline; `sample` writes a sample archive; `batches` lists image batches and
their status; `report` prints the summary of a dataset's training dataset; `env` prints the DAGSTER_HOME
line for plain `dagster` commands. Commands that take their own options are handed the rest of the
command line (``add_help=False``) and parse it themselves.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inat-assets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="materialize every asset on the bundled sample against a local photo mirror (offline)",
    )
    demo.add_argument(
        "--data-dir",
        default=None,
        help="output folder or object store URL such as s3://bucket/prefix (default: $INAT_DATA_DIR, else ./demo-data)",
    )
    from inat_assets.cli import photos

    photos.add_arguments(
        commands.add_parser("photos", help="photos on disk: `photos unused [--delete]` lists those no dataset selects")
    )
    ui = commands.add_parser(
        "ui", help="the Dagster UI and daemon; --demo: offline on the bundled sample and a local photo mirror"
    )
    ui.add_argument("--demo", action="store_true", help="bundled sample archive, local photo mirror, ./demo-data")
    ui.add_argument("--port", type=int, default=3000, help="webserver port (default 3000)")
    commands.add_parser(
        "sample",
        help="write a synthetic sample archive (see `inat-assets sample --help`)",
        add_help=False,
    )
    commands.add_parser(
        "batches",
        help="list image batch keys: photo-id range, photo count, status (see `inat-assets batches --help`)",
        add_help=False,
    )
    commands.add_parser(
        "report",
        help="print the summary of a dataset's training dataset (see `inat-assets report --help`)",
        add_help=False,
    )
    commands.add_parser(
        "env",
        help="print `export DAGSTER_HOME=...` (the data directory's instance) for plain `dagster` commands",
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "sample":
        from inat_assets.testing.sample import main as sample_main

        return sample_main(rest)
    if args.command == "photos":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return photos.run(args)
    if args.command == "batches":
        from inat_assets.cli.batches import main as batches_main

        return batches_main(rest)
    if args.command == "report":
        from inat_assets.cli.report import main as report_main

        return report_main(rest)
    if args.command == "ui" and not rest:
        from inat_assets.cli.ui import main as ui_main

        return ui_main(demo=args.demo, port=args.port)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from inat_assets.errors import InatAssetsError

    try:
        if args.command == "env":
            from inat_assets.instance import ensure_dagster_home, export_line

            print(export_line(ensure_dagster_home()))
            return 0
        from inat_assets.cli.demo import demo_store, run_demo

        return run_demo(demo_store(args.data_dir))
    except InatAssetsError as exc:  # INAT_DATA_DIR or DAGSTER_HOME unusable: the message says what to do
        print(f"inat-assets {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
