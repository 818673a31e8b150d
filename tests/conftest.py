import os
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep, not spin

import pytest  # noqa: E402
import torch  # noqa: E402
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


def pytest_collection_modifyitems(config, items):
    """In this workplace Ray must run inside the loopback namespace; elsewhere it runs as is."""
    tool = SHARED / "tools" / "loopback-ns"
    if tool.exists() and os.environ.get("LOOPBACK_NS_INSIDE") != "1":
        skip = pytest.mark.skip(reason=f"starts Ray: run the suite inside {tool} (as .ci/run does)")
        for item in items:
            if "ray" in item.keywords:
                item.add_marker(skip)


def _inside_loopback_or_skip(what: str) -> None:
    """Servers run only inside the loopback namespace in this workplace (as tests/test_report.py does)."""
    tool = SHARED / "tools" / "loopback-ns"
    if tool.exists() and os.environ.get("LOOPBACK_NS_INSIDE") != "1":
        pytest.skip(f"starts {what}: run inside {tool}")


@pytest.fixture(scope="session")
def moto_s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the session; yields its ``http://host:port`` endpoint."""
    _inside_loopback_or_skip("a local S3 server")
    moto_server = pytest.importorskip("moto.server")
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def s3_options(moto_s3_endpoint) -> dict:
    """pyarrow ``S3FileSystem`` options (what ``RunStore(..., **s3_options)`` takes) for the moto server."""
    from urllib.parse import urlsplit

    url = urlsplit(moto_s3_endpoint)
    return dict(endpoint_override=url.netloc, scheme=url.scheme, access_key="test", secret_key="test",
                region="us-east-1")


@pytest.fixture()
def s3_bucket(moto_s3_endpoint, monkeypatch, request):
    """A fresh bucket on the moto server, reachable through the standard AWS variables (what the
    code under test reads). Yields ``(bucket_name, boto3_client)``."""
    boto3 = pytest.importorskip("boto3")
    for k, v in {"AWS_ENDPOINT_URL": moto_s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    client = boto3.client("s3", endpoint_url=moto_s3_endpoint, region_name="us-east-1")
    bucket = "b-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    client.create_bucket(Bucket=bucket)
    return bucket, client


@pytest.fixture()
def static_http_server(tmp_path):
    """Serve ``tmp_path / "www"`` over HTTP on 127.0.0.1 (GET only); yields ``(folder, base_url)``."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
