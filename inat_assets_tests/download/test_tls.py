"""HTTPS through each transport (the real photo hosts are HTTPS only): aiohttp, and httpcore on our
asyncio network backend, on its stock one, and with HTTP/2 offered."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from inat_assets.download import PhotoTask, run_download
from inat_assets.testing.mirror import serve_mirror, served_bytes
from inat_assets_tests.download.conftest import HOST_A, IMAGE_BYTES, fast_config


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize(("transport", "fast", "http2"),
                         [("aiohttp", True, False), ("httpcore", True, False), ("httpcore", False, False),
                          ("httpcore", True, True)])
def test_https_download(certificate: tuple[Path, Path], tmp_path: Path, transport: str, fast: bool,
                        http2: bool) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    with serve_mirror((HOST_A,), image_bytes=IMAGE_BYTES, ssl_context=server_ctx) as mirror:
        assert mirror.base_url().startswith("https://")
        tasks = [PhotoTask(pid, mirror.url(pid)) for pid in range(1, 21)]
        # http2=True offers h2 via ALPN; this server only speaks HTTP/1.1, which must still work.
        config = fast_config(ca_file=str(cert), transport=transport, fast_network_backend=fast, http2=http2)
        summary = run_download(tasks, tmp_path, tmp_path / "m.parquet", config)
    assert summary.ok == 20, summary.top_errors
    assert (tmp_path / "7.jpg").read_bytes() == served_bytes(7, "original", "jpg", IMAGE_BYTES)


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
def test_untrusted_certificate_is_a_transient_failure(certificate: tuple[Path, Path], tmp_path: Path,
                                                      transport: str) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    with serve_mirror((HOST_A,), image_bytes=IMAGE_BYTES, ssl_context=server_ctx) as mirror:
        summary = run_download([PhotoTask(1, mirror.url(1))], tmp_path, tmp_path / "m.parquet",
                               fast_config(retries=0, transport=transport))
    assert summary.transient_failed == 1
    assert "CERTIFICATE_VERIFY_FAILED" in summary.top_errors[0][0]
