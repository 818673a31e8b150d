"""Tests for vosbatch.data.download against a real local HTTP server (127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from vosbatch.data import download as dl
from vosbatch.data.download import DownloadError, download_file, ensure_dataset


# ----------------------------------------------------------------------------
# A tiny file server that honours Range and can cut a connection once.
# ----------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: "_Server"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, dict(self.headers)))
        path = srv.root / self.path.lstrip("/").split("?", 1)[0]
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if srv.range_support and m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with srv.lock:
            cut, srv.cut_after = srv.cut_after, None
        if cut is not None and cut < len(body):
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict]] = []
        self.range_support = True
        self.cut_after: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    srv = _Server(root)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(dl, "TIMEOUT_S", 5.0)
    monkeypatch.delenv("VOSBATCH_DAVIS2016_URL", raising=False)
    monkeypatch.delenv("VOSBATCH_DAVIS2016_SHA256", raising=False)


def _payload(n: int = 300_000) -> bytes:
    return os.urandom(n)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ----------------------------------------------------------------------------
# download_file
# ----------------------------------------------------------------------------


def test_plain_download_with_checksum(server, tmp_path):
    data = _payload()
    (server.root / "f.bin").write_bytes(data)
    dest = tmp_path / "out" / "f.bin"
    got = download_file(f"{server.url}/f.bin", dest, sha256=_sha(data), progress=False, chunk=65536)
    assert got == dest
    assert dest.read_bytes() == data
    assert not dest.with_suffix(".bin.part").exists()
    assert len(server.requests) == 1
    assert "Range" not in server.requests[0][1]

    # An existing, verified dest is returned without network.
    download_file(f"{server.url}/f.bin", dest, sha256=_sha(data), progress=False)
    assert len(server.requests) == 1


def test_checksum_mismatch(server, tmp_path):
    data = _payload()
    (server.root / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    wrong = "0" * 64
    url = f"{server.url}/f.bin"
    with pytest.raises(DownloadError) as ei:
        download_file(url, dest, sha256=wrong, progress=False)
    msg = str(ei.value)
    assert url in msg and wrong in msg and _sha(data) in msg
    assert not dest.exists()
    assert not dest.with_suffix(".bin.part").exists()


def test_resume_after_cut_connection(server, tmp_path):
    data = _payload()
    (server.root / "f.bin").write_bytes(data)
    server.cut_after = 100_000
    dest = tmp_path / "f.bin"
    download_file(f"{server.url}/f.bin", dest, sha256=_sha(data), progress=False, chunk=8192)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2
    assert "Range" not in server.requests[0][1]
    rng = server.requests[1][1].get("Range")
    assert rng is not None and re.fullmatch(r"bytes=\d+-", rng)
    assert 0 < int(rng[6:-1]) <= 100_000


def test_resume_existing_part_file(server, tmp_path):
    data = _payload()
    (server.root / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    dest.with_suffix(".bin.part").write_bytes(data[:12345])
    download_file(f"{server.url}/f.bin", dest, sha256=_sha(data), progress=False)
    assert dest.read_bytes() == data
    assert server.requests[0][1].get("Range") == "bytes=12345-"


def test_server_without_range_restarts_from_zero(server, tmp_path):
    data = _payload()
    (server.root / "f.bin").write_bytes(data)
    server.range_support = False
    dest = tmp_path / "f.bin"
    # A stale .part with garbage: it must be discarded, not spliced.
    dest.with_suffix(".bin.part").write_bytes(b"\xff" * 5000)
    server.cut_after = 50_000  # and a cut connection on top: retry gets 200 again
    download_file(f"{server.url}/f.bin", dest, sha256=_sha(data), progress=False, chunk=8192)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2
    assert all("Range" in h for _, h in server.requests)
    assert not dest.with_suffix(".bin.part").exists()


def test_part_already_complete_416(server, tmp_path):
    data = _payload(1000)
    (server.root / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    dest.with_suffix(".bin.part").write_bytes(data)
    download_file(f"{server.url}/f.bin", dest, sha256=_sha(data), progress=False)
    assert dest.read_bytes() == data


def test_404_names_url(server, tmp_path):
    url = f"{server.url}/missing.zip"
    with pytest.raises(DownloadError) as ei:
        download_file(url, tmp_path / "missing.zip", progress=False)
    assert url in str(ei.value) and "404" in str(ei.value)
    assert len(server.requests) == 1  # not retried
    assert not (tmp_path / "missing.zip").exists()


def test_retries_exhausted(server, tmp_path):
    data = _payload(1000)
    (server.root / "f.bin").write_bytes(data)
    url = f"{server.url}/f.bin"
    server.shutdown()
    server.server_close()  # connection refused from now on
    with pytest.raises(DownloadError) as ei:
        download_file(url, tmp_path / "f.bin", progress=False, retries=2)
    assert url in str(ei.value) and "3 attempts" in str(ei.value)


def test_progress_bar_runs(server, tmp_path, capsys):
    data = _payload(50_000)
    (server.root / "f.bin").write_bytes(data)
    download_file(f"{server.url}/f.bin", tmp_path / "f.bin", progress=True, chunk=4096)
    assert (tmp_path / "f.bin").read_bytes() == data


# ----------------------------------------------------------------------------
# ensure_dataset
# ----------------------------------------------------------------------------

_SEQS = ("bear", "blackswan")


def _davis_zip(corrupt_last: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("DAVIS/", b"")
        lines = []
        for seq in _SEQS:
            for i in range(3):
                fr = f"{i:05d}"
                zf.writestr(f"DAVIS/JPEGImages/480p/{seq}/{fr}.jpg",
                            b"\xff\xd8\xff\xe0" + f"{seq}-{fr}-jpg".encode() + b"\xff\xd9")
                zf.writestr(f"DAVIS/JPEGImages/1080p/{seq}/{fr}.jpg", b"\xff\xd8big\xff\xd9")
                zf.writestr(f"DAVIS/Annotations/480p/{seq}/{fr}.png",
                            b"\x89PNG\r\n\x1a\n" + f"{seq}-{fr}-png".encode())
                lines.append(f"/JPEGImages/480p/{seq}/{fr}.jpg /Annotations/480p/{seq}/{fr}.png")
        zf.writestr("DAVIS/ImageSets/480p/val.txt", "\n".join(lines) + "\n")
        zf.writestr("DAVIS/ImageSets/480p/train.txt", "")
        zf.writestr("__MACOSX/DAVIS/._junk", b"junk")
        zf.writestr("DAVIS/zz_last.bin", b"UNIQUE-TAIL-CONTENT" * 10)
    raw = buf.getvalue()
    if corrupt_last:  # flip stored bytes of the last member: CRC error mid-extraction
        i = raw.index(b"UNIQUE-TAIL-CONTENT")
        raw = raw[:i] + b"X" + raw[i + 1:]
    return raw


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != ".downloads")


def test_ensure_dataset_davis_layout(server, tmp_path, monkeypatch):
    raw = _davis_zip()
    (server.root / "DAVIS-data.zip").write_bytes(raw)
    monkeypatch.setenv("VOSBATCH_DAVIS2016_URL", f"{server.url}/DAVIS-data.zip")
    monkeypatch.setenv("VOSBATCH_DAVIS2016_SHA256", _sha(raw))
    root = tmp_path / "davis"

    got = ensure_dataset("davis2016", root, progress=False)
    assert got == root
    for seq in _SEQS:
        assert (root / "JPEGImages/480p" / seq / "00000.jpg").is_file()
        assert (root / "Annotations/480p" / seq / "00002.png").is_file()
    val = (root / "ImageSets/480p/val.txt").read_text().splitlines()
    assert val[0] == "/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png"
    assert not (root / "JPEGImages/1080p").exists()  # 1080p frames are skipped
    assert not (root / "DAVIS").exists() and not (root / "__MACOSX").exists()
    assert not any(p.name.startswith(".extract") for p in root.iterdir())
    assert len(server.requests) == 1

    # Second call: layout present -> no network at all.
    assert ensure_dataset("davis2016", root, progress=False) == root
    assert len(server.requests) == 1


def test_ensure_dataset_existing_layout_no_network(tmp_path, monkeypatch):
    root = tmp_path / "d"
    for p in ("JPEGImages/480p/bear", "Annotations/480p/bear", "ImageSets/480p"):
        (root / p).mkdir(parents=True)
    (root / "JPEGImages/480p/bear/00000.jpg").write_bytes(b"x")
    monkeypatch.setenv("VOSBATCH_DAVIS2016_URL", "http://127.0.0.1:9/never")
    assert ensure_dataset("davis2016", root, progress=False) == root


@pytest.mark.parametrize("kind", ["garbage", "crc"])
def test_ensure_dataset_corrupt_zip(server, tmp_path, monkeypatch, kind):
    raw = os.urandom(4096) if kind == "garbage" else _davis_zip(corrupt_last=True)
    (server.root / "DAVIS-data.zip").write_bytes(raw)
    url = f"{server.url}/DAVIS-data.zip"
    monkeypatch.setenv("VOSBATCH_DAVIS2016_URL", url)
    root = tmp_path / "davis"
    with pytest.raises(DownloadError) as ei:
        ensure_dataset("davis2016", root, progress=False)
    assert url in str(ei.value) and "corrupt" in str(ei.value)
    assert _leftovers(root) == []  # no half dataset, no temp folder
    assert not (root / ".downloads/DAVIS-data.zip").exists()  # re-downloaded next time

    # Once the server has a good archive, a retry succeeds.
    (server.root / "DAVIS-data.zip").write_bytes(_davis_zip())
    ensure_dataset("davis2016", root, progress=False)
    assert (root / "JPEGImages/480p/bear/00000.jpg").is_file()


def test_ensure_dataset_unknown_name(tmp_path):
    with pytest.raises(KeyError):
        ensure_dataset("nope", tmp_path, progress=False)


def test_default_registry():
    a = dl.DATASET_ARCHIVES["davis2016"]
    assert a.url == "https://graphics.ethz.ch/Downloads/Data/Davis/DAVIS-data.zip"
    assert a.sha256 is None and a.strip_prefix == "DAVIS"
    assert dl.resolve_archive("davis2016") == a
