"""fetch: download from a local HTTP server, checksums enforced, caches first, offline misses explained.
Nothing here touches the real network: the table entry is pointed at 127.0.0.1."""
from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from research.errors import UserError
from research.weights import fetch

PAYLOAD = b"not really weights, but bytes with a checksum" * 100
NAME = "resnet50-0676ba61.pth"


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; counts the requests."""
    root = tmp_path / "www"
    root.mkdir()
    (root / NAME).write_bytes(PAYLOAD)
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, hits
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty Keras and torch caches, so that a real cache on this machine plays no part."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RESEARCH_CACHE", str(tmp_path / "ours"))
    return tmp_path


def _point(monkeypatch, url, payload=PAYLOAD, algorithm="sha256"):
    digest = hashlib.new(algorithm, payload).hexdigest()
    entry = fetch.Known(f"{url}/{NAME}", algorithm, digest, "torchvision")
    monkeypatch.setitem(fetch.KNOWN, NAME, entry)


def test_download_verifies_then_cache_hits_without_network(server, isolated, monkeypatch):
    url, _, hits = server
    _point(monkeypatch, url)
    path = fetch.fetch(NAME, progress=False)
    assert path == isolated / "ours" / "weights" / NAME and path.read_bytes() == PAYLOAD
    assert hits == [f"/{NAME}"]
    assert fetch.fetch(NAME, progress=False) == path and len(hits) == 1  # served from the cache
    assert fetch.fetch(NAME, offline=True) == path
    assert not list(path.parent.glob(".*download*"))


def test_corrupt_download_is_refused_and_not_kept(server, isolated, monkeypatch):
    url, _, _ = server
    _point(monkeypatch, url, payload=b"the published file")
    with pytest.raises(UserError, match="refused") as info:
        fetch.fetch(NAME, progress=False)
    assert "\n" not in str(info.value)
    folder = isolated / "ours" / "weights"
    assert not folder.exists() or not any(folder.iterdir())


def test_framework_cache_is_used_and_a_corrupt_copy_ignored(server, isolated, monkeypatch):
    url, _, hits = server
    _point(monkeypatch, url, algorithm="md5")
    torch_copy = isolated / "torch" / "hub" / "checkpoints" / NAME
    torch_copy.parent.mkdir(parents=True)
    torch_copy.write_bytes(PAYLOAD)
    assert fetch.fetch(NAME, offline=True) == torch_copy and not hits
    torch_copy.write_bytes(b"truncated")
    assert fetch.find(NAME) is None
    assert fetch.fetch(NAME, progress=False).read_bytes() == PAYLOAD and len(hits) == 1


def test_torchvision_prefix_checksum():
    entry = fetch.KNOWN["resnet50-0676ba61.pth"]
    assert entry.algorithm == "sha256:8" and entry.digest == "0676ba61"
    assert fetch.KNOWN["vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"].url.startswith(
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/")


def test_offline_miss_names_the_file_and_where_to_put_it(isolated):
    with pytest.raises(UserError) as info:
        fetch.fetch("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", offline=True)
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message and "keras" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="unknown weight file"):
        fetch.fetch("resnet51.h5", offline=True)


def test_unreachable_server_is_one_line(isolated, monkeypatch):
    monkeypatch.setitem(fetch.KNOWN, NAME, fetch.Known(f"http://127.0.0.1:9/{NAME}", "sha256:8", "0", "torchvision"))
    with pytest.raises(UserError, match="could not download"):
        fetch.fetch(NAME, progress=False)
