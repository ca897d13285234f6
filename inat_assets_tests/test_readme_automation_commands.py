"""The README's "Turn automation on and off" commands, run as written in a fresh shell (no DAGSTER_HOME):
the states they set persist in the data directory's instance, and everything starts off."""

from __future__ import annotations

import sys
from pathlib import Path

from inat_assets_tests.test_cli_batches import _shell

BIN = Path(sys.executable).parent
DEFS = "-m inat_assets.definitions"


def _states(listing: str) -> dict[str, str]:
    """`dagster sensor list` / `schedule list` output -> {name: RUNNING|STOPPED}."""
    states: dict[str, str] = {}
    for line in listing.splitlines():
        for state in ("RUNNING", "STOPPED"):
            if state in line:
                name = line.split(":", 1)[-1].split("[")[0].strip() if ":" in line else line.split()[0]
                states[name] = state
    return states


def test_turning_automation_on_and_off_as_the_readme_says(tmp_path: Path) -> None:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "INAT_DATA_DIR": str(tmp_path / "data")}
    home = 'eval "$(inat-assets env)" && '
    before = _shell(f"{home}dagster sensor list {DEFS}", env, tmp_path)
    assert set(_states(before).values()) == {"STOPPED"}, before  # nothing downloads until asked
    _shell(
        f"{home}dagster schedule start dwca_source_weekly {DEFS} && "
        f"dagster sensor start archive_automation {DEFS} && "
        f"dagster sensor start plants_batch_fill {DEFS} && "
        f"dagster sensor stop plants_batch_fill {DEFS}",
        env,
        tmp_path,
    )
    sensors = _states(_shell(f"{home}dagster sensor list {DEFS}", env, tmp_path))
    schedules = _states(_shell(f"{home}dagster schedule list {DEFS}", env, tmp_path))
    assert sensors == {"archive_automation": "RUNNING", "plants_batch_fill": "STOPPED", "fungi_open_batch_fill": "STOPPED"}, sensors
    assert schedules == {"dwca_source_weekly": "RUNNING"}, schedules
    assert (tmp_path / "data" / "dagster_home" / "dagster.yaml").is_file()
