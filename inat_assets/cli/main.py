"""The `inat-assets` command: `demo` runs the whole graph offline; `sample` writes a sample archive."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inat-assets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="materialize every asset on the bundled sample against a local photo mirror (offline)",
    )
    demo.add_argument(
        "--data-dir", type=Path, default=None, help="output folder (default: $INAT_DATA_DIR, else ./demo-data)"
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
    args, rest = parser.parse_known_args(argv)
    if args.command == "sample":
        from inat_assets.testing.sample import main as sample_main

        return sample_main(rest)
    if args.command == "ui" and not rest:
        from inat_assets.cli.ui import main as ui_main

        return ui_main(demo=args.demo, port=args.port)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from inat_assets.cli.demo import default_data_dir, run_demo

    return run_demo((args.data_dir or default_data_dir()).resolve())


if __name__ == "__main__":
    sys.exit(main())
