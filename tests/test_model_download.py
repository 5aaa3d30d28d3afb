"""`captaflow model get`: a bundle served from 127.0.0.1, cut mid-download, tampered with."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bundle import load_bundle, model_present
from agent.cli import main as cli_main
from agent.config import load_settings
from agent.model_download import (
    ModelDownloadError,
    Progress,
    bundle_test_label,
    download_bundle,
    make_bundle_archive,
)

pytestmark = pytest.mark.network


class BundleServer:
    """A static file server on 127.0.0.1 that honours Range and can cut or tamper."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.cut_after: int | None = None  # bytes sent before the connection is dropped
        self.cuts_left = 0
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Range")))
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                wanted = self.headers.get("Range")
                if wanted and not owner.ignore_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                if owner.cut_after is not None and owner.cuts_left > 0:
                    owner.cuts_left -= 1
                    self.wfile.write(rest[: owner.cut_after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> BundleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def archive(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("archive") / "captaflow-model.tar.gz"
    return make_bundle_archive(tiny_bundle, out).read_bytes()


@pytest.fixture
def server(archive: bytes) -> Iterator[BundleServer]:
    digest = hashlib.sha256(archive).hexdigest()
    with BundleServer(
        {"/model.tar.gz": archive, "/model.tar.gz.sha256": f"{digest}  model.tar.gz\n".encode()}
    ) as running:
        yield running


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_download_is_verified_and_installed(
    server: BundleServer, archive: bytes, tmp_path: Path, tiny_bundle: Path
) -> None:
    seen: list[Progress] = []
    dest = tmp_path / "model"
    bundle = download_bundle(
        server.base + "/model.tar.gz", dest, sha256=sha(archive), progress=seen.append
    )
    assert bundle.path == dest and model_present(dest)
    assert (dest / "model.onnx").read_bytes() == (tiny_bundle / "model.onnx").read_bytes()
    load_bundle(dest)  # the manifest's checks pass
    assert seen[-1].done == len(archive) and seen[-1].total == len(archive)
    assert not list(tmp_path.glob("*.part-download")) and not list(tmp_path.glob(".model-*"))


def test_a_cut_download_resumes_where_it_broke_off(
    server: BundleServer, archive: bytes, tmp_path: Path
) -> None:
    server.cut_after = len(archive) // 2
    server.cuts_left = 1
    dest = tmp_path / "model"
    download_bundle(server.base + "/model.tar.gz", dest, sha256=sha(archive), retry_wait=0)
    assert model_present(dest)
    ranges = [r for path, r in server.requests if path == "/model.tar.gz"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(archive) // 2}-", ranges


def test_a_download_cut_every_time_keeps_its_part_for_the_next_run(
    server: BundleServer, archive: bytes, tmp_path: Path
) -> None:
    server.cut_after = len(archive) // 3
    server.cuts_left = 2
    dest = tmp_path / "model"
    url = server.base + "/model.tar.gz"
    with pytest.raises(ModelDownloadError, match="next `captaflow model get` resumes"):
        download_bundle(url, dest, sha256=sha(archive), attempts=2, retry_wait=0)
    assert not dest.exists()
    part = tmp_path / "model.part-download"
    assert part.stat().st_size == 2 * (len(archive) // 3)
    download_bundle(url, dest, sha256=sha(archive), retry_wait=0)  # the next run finishes it
    assert model_present(dest)
    assert server.requests[-1][1] == f"bytes={2 * (len(archive) // 3)}-"


def test_a_server_without_range_support_is_read_again_from_the_start(
    server: BundleServer, archive: bytes, tmp_path: Path
) -> None:
    server.ignore_range = True
    server.cut_after = 100
    server.cuts_left = 1
    download_bundle(
        server.base + "/model.tar.gz", tmp_path / "model", sha256=sha(archive), retry_wait=0
    )
    assert model_present(tmp_path / "model")


def test_a_tampered_archive_is_refused_and_nothing_installed(
    server: BundleServer, archive: bytes, tmp_path: Path
) -> None:
    tampered = bytearray(archive)
    tampered[len(tampered) // 2] ^= 0xFF
    server.files["/model.tar.gz"] = bytes(tampered)
    dest = tmp_path / "model"
    with pytest.raises(ModelDownloadError, match=r"tampered.*nothing installed"):
        download_bundle(server.base + "/model.tar.gz", dest, sha256=sha(archive))
    assert not dest.exists()
    assert not list(tmp_path.iterdir()), "the bad download must not be kept"


def test_an_archive_whose_files_do_not_match_their_manifest_is_refused(
    server: BundleServer, tiny_bundle: Path, tmp_path: Path
) -> None:
    # A re-packed archive with the right outer sha256 (so the pin passes) but a model file
    # changed after the manifest was written: the bundle's own check must catch it.
    work = tmp_path / "work"
    shutil.copytree(tiny_bundle, work, ignore=shutil.ignore_patterns("*.d", "intermediate*"))
    with (work / "model.onnx").open("r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    bad = make_bundle_archive(work, tmp_path / "bad.tar.gz").read_bytes()
    server.files["/bad.tar.gz"] = bad
    dest = tmp_path / "installed" / "model"
    existing = dest
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("the old model")
    with pytest.raises(ModelDownloadError, match="manifest check: refused, nothing installed"):
        download_bundle(server.base + "/bad.tar.gz", dest, sha256=sha(bad))
    assert (existing / "keep.txt").read_text() == "the old model"


def test_an_archive_with_a_path_outside_is_refused(server: BundleServer, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tarred:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tarred.addfile(info, io.BytesIO(b"hi"))
    evil = buffer.getvalue()
    server.files["/evil.tar.gz"] = evil
    with pytest.raises(ModelDownloadError, match="unsafe path"):
        download_bundle(server.base + "/evil.tar.gz", tmp_path / "m" / "model", sha256=sha(evil))
    assert not (tmp_path / "m" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()


def test_no_pinned_sha_uses_the_published_one(server: BundleServer, tmp_path: Path) -> None:
    download_bundle(server.base + "/model.tar.gz", tmp_path / "model", sha256="")
    assert model_present(tmp_path / "model")


def test_offline_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port with nothing listening on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ModelDownloadError) as caught:
        download_bundle(
            f"http://127.0.0.1:{port}/model.tar.gz",
            tmp_path / "model",
            sha256="0" * 64,
            attempts=2,
            retry_wait=0,
            timeout=5,
        )
    message = str(caught.value)
    assert "\n" not in message and "offline" in message and "--model DIR" in message
    assert not (tmp_path / "model").exists()


def test_captaflow_model_get(
    server: BundleServer, archive: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[model]\nbundle_url = "{server.base}/model.tar.gz"\nbundle_sha256 = "{sha(archive)}"\n',
        encoding="utf-8",
    )
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    assert cli_main(["model", "get", *args]) == 0
    err = capsys.readouterr().err
    assert "100 %" in err and "model installed" in err, err
    settings = load_settings(config, {"data_dir": tmp_path / "data"})
    assert settings.model.dir == tmp_path / "data" / "model" and model_present(settings.model.dir)
    assert cli_main(["model", "get", *args]) == 0
    assert "already" in capsys.readouterr().err
    # A wrong pin on the command line: refused with one line, exit status 1.
    assert cli_main(["model", "get", "--force", "--sha256", "1" * 64, *args]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("captaflow: ") and "refused, nothing installed" in last
    assert model_present(settings.model.dir), "the installed model must stay"


def test_the_bundle_test_label_is_read_from_the_manifest(tmp_path: Path, tiny_bundle: Path) -> None:
    assert bundle_test_label(tmp_path / "nothing") is None
    copy = tmp_path / "bundle"
    copy.mkdir()
    manifest = json.loads((tiny_bundle / "manifest.json").read_text(encoding="utf-8"))
    for value, expected in ((None, None), ("tiny random model", "tiny random model")):
        manifest["test_model"] = value
        (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        assert bundle_test_label(copy) == expected
