"""`inat-assets ui`: the demo is offline on the bundled sample; the real archive is an explicit choice."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from inat_assets.cli.main import main
from inat_assets.cli.ui import demo_environment, lineage_url


def test_ui_without_demo_refuses_when_no_archive_is_chosen(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("INAT_DWCA_SOURCE", raising=False)
    assert main(["ui", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "INAT_DWCA_SOURCE is not set" in err and "--demo" in err


def test_demo_environment_uses_sample_local_mirror_and_its_own_instance(tmp_path: Path) -> None:
    environ = {"INAT_DATA_DIR": str(tmp_path / "data"), "INAT_DWCA_SOURCE": "https://example.org/big.zip"}
    with demo_environment(environ) as env:
        assert Path(env["INAT_DWCA_SOURCE"]).name == "sample-dwca.zip" and Path(env["INAT_DWCA_SOURCE"]).is_file()
        assert env["INAT_ALLOWED_HOSTS"] == "127.0.0.1"
        assert env["INAT_PHOTO_MIRROR"].startswith("http://127.0.0.1:")
        # The mirror it started answers for as long as the UI runs.
        assert httpx.get(env["INAT_PHOTO_MIRROR"] + "/photos/1/original.jpg").status_code == 200
        assert env["DAGSTER_HOME"] == str(tmp_path / "data" / "dagster_home")
        assert (tmp_path / "data" / "dagster_home" / "dagster.yaml").is_file()


def test_demo_environment_keeps_a_mirror_and_instance_given_by_the_caller(tmp_path: Path) -> None:
    environ = {"INAT_PHOTO_MIRROR": "http://127.0.0.1:9", "DAGSTER_HOME": str(tmp_path / "home")}
    with demo_environment(environ) as env:
        assert env["INAT_PHOTO_MIRROR"] == "http://127.0.0.1:9"
        assert env["DAGSTER_HOME"] == str(tmp_path / "home")


def test_lineage_url_opens_every_group() -> None:
    url = lineage_url("http://127.0.0.1:3000/", {"tables", "archive"})
    assert url == "http://127.0.0.1:3000/asset-groups?expanded=global@global:archive,global@global:tables"
