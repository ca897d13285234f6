"""`dg` sees the declared datasets: scaffold a new one, check and list the definitions, refuse a bad one.

Runs on a copy of the project (PYTHONPATH puts the copy's inat_assets first), so the repository's
own defs folder is never written to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _dg(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(project),
        "VIRTUAL_ENV": str(BIN.parent),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(project / "dagster_home"),
    }
    (project / "dagster_home").mkdir(exist_ok=True)
    return subprocess.run([str(BIN / "dg"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_dg_scaffolds_checks_and_lists_declared_datasets(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(
        REPO / "inat_assets", project / "inat_assets", ignore=shutil.ignore_patterns("__pycache__", "sample_data")
    )
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")

    scaffold = _dg(project, "scaffold", "defs", "inat_assets.components.InatDataset", "datasets/birds")
    assert scaffold.returncode == 0, scaffold.stdout + scaffold.stderr
    declaration = project / "inat_assets" / "defs" / "datasets" / "birds" / "defs.yaml"
    assert "name: birds" in declaration.read_text()

    check = _dg(project, "check", "defs")
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    listed = _dg(project, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    keys = {asset["asset_key"] for asset in json.loads(listed.stdout)["assets"]}
    assert {"birds/fetch_parquet", "birds/image_batches", "plants/fetch_parquet", "fungi_open/image_batches"} <= keys

    declaration.write_text(declaration.read_text().replace("kingdom: [Plantae]", "kingdom: [Plantea]"))
    broken = _dg(project, "check", "defs")
    assert broken.returncode != 0
    output = broken.stdout + broken.stderr
    # dg validates the YAML against the declaration's schema first: file, line, field and value.
    assert "datasets/birds/defs.yaml:8" in output and "kingdom" in output and "Plantea" in output
