"""`inat-assets ui [--demo] [--port N]`: the Dagster UI (webserver and daemon) on this project.

`--demo` is the offline first look: the bundled sample archive, photos from a local mirror on
127.0.0.1 (started here unless INAT_PHOTO_MIRROR names one), output in $INAT_DATA_DIR or ./demo-data,
and the instance in <data dir>/dagster_home unless DAGSTER_HOME is set. Nothing leaves the machine,
so "Materialize all" is safe to click.

Without `--demo` the archive is an explicit choice: INAT_DWCA_SOURCE must name it (the official URL
of the ~25 GB zip, or a local copy); the command refuses to start otherwise instead of pointing the
UI at a 25 GB download.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from importlib.resources import as_file, files
from types import FrameType
from urllib.parse import quote

from inat_assets.cli.demo import DEMO_MAX_REJECT_SHARE, demo_store
from inat_assets.errors import ArchiveError, InatAssetsError
from inat_assets.instance import data_store_from_env, default_dagster_home, ensure_dagster_home
from inat_assets.resources import DwcaResource

DEFAULT_PORT = 3000
# The bundled sample's ~190 plant photos fall into four batches of this span (as in `inat-assets demo`).
DEMO_BATCH_SPAN = "500"
# The sample's deliberate malformed lines (0.99 % of observations) would fail the 0.1 % reject check
# and show the tables red on a first look; 2 % keeps the check meaningful for the sample.
# `dagster dev` loads the code location from the installed package, so this works from any folder.
DEFINITIONS_MODULE = "inat_assets.definitions"

class SourceNotChosen(InatAssetsError):
    """`inat-assets ui` without --demo and without INAT_DWCA_SOURCE."""


def dagster_dev_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """`dagster dev` (webserver + daemon) for the installed definitions, from this interpreter."""
    return [sys.executable, "-m", "dagster", "dev", "-m", DEFINITIONS_MODULE, "--host", host, "--port", str(port)]


@contextmanager
def demo_environment(environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The environment of a demo UI: sample archive, local mirror, demo data dir and instance."""
    with ExitStack() as stack:
        env = dict(environ)
        sample = stack.enter_context(as_file(files("inat_assets") / "sample_data" / "sample-dwca.zip"))
        env["INAT_DWCA_SOURCE"] = str(sample)
        # The one parse of INAT_DATA_DIR (a folder, or a store URL kept as a URL, never made a local path).
        env["INAT_DATA_DIR"] = demo_store(None, env).url
        env.setdefault("INAT_BATCH_SPAN", DEMO_BATCH_SPAN)
        env.setdefault("INAT_MAX_REJECT_SHARE", str(DEMO_MAX_REJECT_SHARE))
        if not env.get("INAT_PHOTO_MIRROR"):
            from inat_assets.testing.mirror import serve_mirror

            mirror = stack.enter_context(serve_mirror(("127.0.0.1",)))
            env["INAT_PHOTO_MIRROR"] = mirror.base_url()
        # Photos may come only from the mirror: a demo never reaches iNaturalist.
        env["INAT_ALLOWED_HOSTS"] = "127.0.0.1"
        env["DAGSTER_HOME"] = str(ensure_dagster_home(default_dagster_home(env)))
        yield env


def real_environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    try:  # the same rule, and message, as the dwca_archive asset
        DwcaResource(dwca_source=env.get("INAT_DWCA_SOURCE", "")).source()
    except ArchiveError as exc:
        raise SourceNotChosen(str(exc)) from None
    data_store_from_env(env)  # INAT_DATA_DIR through the one parse: an unusable one fails here, not in a run
    env["DAGSTER_HOME"] = str(ensure_dagster_home(default_dagster_home(env)))
    return env


def lineage_url(base_url: str, groups: Iterable[str]) -> str:
    """The global lineage with these asset groups open.

    Dagster's UI opens the global lineage with every group collapsed to a box (its default when there
    is more than one group; the open groups live only in the URL's `expanded` parameter and the
    browser's local storage), so this link is how a first look shows the whole graph.
    """
    expanded = ",".join(f"global@global:{group}" for group in sorted(groups))
    return f"{base_url.rstrip('/')}/asset-groups?expanded={quote(expanded, safe='@:,')}"


def asset_groups() -> set[str]:
    from inat_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    return {graph.get(key).group_name for key in graph.materializable_asset_keys}


def run_dagster_dev(env: Mapping[str, str], port: int) -> int:
    """Run `dagster dev` until it exits or this process is asked to stop (then stop it cleanly)."""
    print(
        f"inat-assets ui: http://127.0.0.1:{port}  archive {env['INAT_DWCA_SOURCE']}\n"
        f"  whole graph: {lineage_url(f'http://127.0.0.1:{port}', asset_groups())}\n"
        f"  data {env.get('INAT_DATA_DIR', './data')}  instance {env['DAGSTER_HOME']}"
        + (f"  photo mirror {env['INAT_PHOTO_MIRROR']}" if env.get("INAT_PHOTO_MIRROR") else ""),
        flush=True,
    )
    child = subprocess.Popen(dagster_dev_command(port), env=dict(env))

    def forward(signum: int, _frame: FrameType | None) -> None:
        # dagster dev stops its webserver, daemon and code servers on SIGINT/SIGTERM. Seen here with
        # dagster 1.13.27: after a run, they sometimes stayed alive for minutes after the daemon logged
        # "Daemon threads shut down" (the e2e harness therefore kills its process group).
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


def main(demo: bool, port: int) -> int:
    try:
        if demo:
            with demo_environment(os.environ) as env:
                return run_dagster_dev(env, port)
        env = real_environment(os.environ)
    except InatAssetsError as exc:  # no archive chosen, or a data dir / DAGSTER_HOME that cannot be used
        print(f"inat-assets ui: {exc}", file=sys.stderr)
        return 2
    return run_dagster_dev(env, port)
