"""tools/download.py against a local HTTP server on 127.0.0.1 (no other network)."""
from __future__ import annotations

import hashlib
import http.server
import importlib.util
import os
import re
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("netdef_download_tool",
                                               os.path.join(ROOT, "tools", "download.py"))
download = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(download)

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)   # a few chunks, not a multiple of one
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.payload at /model.caffemodel with Range support.

    ``server.cut_after`` is a list: each entry is consumed by one request and
    says how many body bytes to send before dropping the connection (None =
    send everything), simulating an interrupted transfer.
    """

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))
        if self.path != "/model.caffemodel":
            self.send_error(404)
            return
        data, start, status = srv.payload, 0, 200
        wanted = self.headers.get("Range")
        if wanted and srv.support_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = srv.cut_after.pop(0) if srv.cut_after else None
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.payload, srv.ranges, srv.cut_after, srv.support_range = PAYLOAD, [], [], True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/model.caffemodel"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAY", 0.0)


def make_model_dir(tmp_path, url, sha1=SHA1):
    model = tmp_path / "tiny_model"
    model.mkdir()
    lines = ["---", "name: Tiny Model", "caffemodel: tiny.caffemodel", f"caffemodel_url: {url}",
             "license: unrestricted"]
    if sha1:
        lines.append(f"sha1: {sha1}")
    lines += ["---", "", "A tiny model. caffemodel: not-this-one.caffemodel"]
    (model / "readme.md").write_text("\n".join(lines) + "\n")
    return model


def run(*args) -> int:
    return download.main([str(a) for a in args] + ["--timeout", "10"])


def test_full_download_verified(tmp_path, server, capsys):
    model = make_model_dir(tmp_path, server.url)
    assert run(model) == 0
    assert (model / "tiny.caffemodel").read_bytes() == PAYLOAD
    assert sorted(os.listdir(model)) == ["readme.md", "tiny.caffemodel"]
    err = capsys.readouterr().err
    assert "sha1 ok" in err and "MB" in err
    assert server.ranges == [None]
    # A second run finds the verified file and does not download again.
    assert run(model / "readme.md") == 0
    assert server.ranges == [None]
    assert "already present" in capsys.readouterr().err


def test_interrupted_transfer_resumes_automatically(tmp_path, server, capsys):
    model = make_model_dir(tmp_path, server.url)
    server.cut_after = [1_000_000]
    assert run(model, "--out", tmp_path / "out") == 0
    assert (tmp_path / "out" / "tiny.caffemodel").read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=1000000-"]
    assert "resuming at 1.0 MB" in capsys.readouterr().err


def test_interrupted_run_resumes_on_the_next_run(tmp_path, server, capsys):
    model = make_model_dir(tmp_path, server.url)
    server.cut_after = [1_500_000]
    assert run(model, "--retries", "0") == 1
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again to resume" in err
    part = model / "tiny.caffemodel.part"
    assert part.stat().st_size == 1_500_000
    assert not (model / "tiny.caffemodel").exists()
    assert run(model) == 0
    assert (model / "tiny.caffemodel").read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=1500000-"]
    assert not part.exists()


def test_server_without_range_support_restarts(tmp_path, server, capsys):
    model = make_model_dir(tmp_path, server.url)
    server.support_range = False
    (model / "tiny.caffemodel.part").write_bytes(b"stale partial bytes")
    assert run(model) == 0
    assert (model / "tiny.caffemodel").read_bytes() == PAYLOAD
    assert "ignored the Range request" in capsys.readouterr().err


def test_complete_part_file_is_verified_without_data(tmp_path, server):
    model = make_model_dir(tmp_path, server.url)
    (model / "tiny.caffemodel.part").write_bytes(PAYLOAD)
    assert run(model) == 0                      # the server answers 416
    assert (model / "tiny.caffemodel").read_bytes() == PAYLOAD


def test_sha1_mismatch_deletes_part(tmp_path, server, capsys):
    model = make_model_dir(tmp_path, server.url, sha1="0" * 40)
    assert run(model) == 1
    err = capsys.readouterr().err
    assert "sha1 mismatch" in err and "0" * 40 in err and SHA1 in err
    assert sorted(os.listdir(model)) == ["readme.md"]


def test_sha1_override_and_url_override(tmp_path, server):
    model = make_model_dir(tmp_path, "http://127.0.0.1:9/never-used", sha1="0" * 40)
    assert run(model, "--url", server.url, "--sha1", SHA1.upper()) == 0
    assert (model / "tiny.caffemodel").read_bytes() == PAYLOAD


def test_missing_sha1_warns_loudly_and_keeps(tmp_path, server, capsys):
    model = make_model_dir(tmp_path, server.url, sha1=None)
    assert run(model) == 0
    assert (model / "tiny.caffemodel").read_bytes() == PAYLOAD
    assert "WARNING: no sha1" in capsys.readouterr().err


def test_http_error_and_bad_arguments(tmp_path, server, capsys):
    model = make_model_dir(tmp_path, server.url.replace("model", "missing"))
    assert run(model) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert run(tmp_path / "nowhere") == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("# no front matter here\n")
    assert run(empty) == 2
    assert "pass --url" in capsys.readouterr().err


def test_parse_readme_front_matter():
    text = ("---\nname: BAIR/BVLC AlexNet Model\ncaffemodel: bvlc_alexnet.caffemodel\n"
            "caffemodel_url: http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel\n"
            "license: unrestricted\nsha1: 9116a64c0fbe4459d18f4bb6b56d647b63920377\n---\n\n"
            "sha1: not-this\n")
    info = download.parse_readme(text)
    assert info == {"name": "BAIR/BVLC AlexNet Model", "caffemodel": "bvlc_alexnet.caffemodel",
                    "caffemodel_url":
                        "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
                    "sha1": "9116a64c0fbe4459d18f4bb6b56d647b63920377"}


def test_parse_readme_without_front_matter():
    """Older gist readmes (NIN, VGG) list the keys under a heading."""
    text = ("##Information\n\nname: 16-layer model\n\ncaffemodel: VGG_ILSVRC_16_layers\n\n"
            "caffemodel_url: http://example.org/VGG_ILSVRC_16_layers.caffemodel\n\n"
            "license: non-commercial\n\n## Description\n")
    info = download.parse_readme(text)
    assert info["caffemodel"] == "VGG_ILSVRC_16_layers" and "sha1" not in info
    assert info["caffemodel_url"].endswith("VGG_ILSVRC_16_layers.caffemodel")


def test_name_without_extension_gets_caffemodel(tmp_path, server):
    model = tmp_path / "vgg"
    model.mkdir()
    (model / "readme.md").write_text(f"caffemodel: VGG_tiny\n\ncaffemodel_url: {server.url}\n")
    assert run(model, "--sha1", SHA1) == 0
    assert (model / "VGG_tiny.caffemodel").read_bytes() == PAYLOAD


def test_parse_real_zoo_readmes(shared_models):
    alexnet = download.parse_readme((shared_models / "bvlc_alexnet" / "readme.md").read_text())
    assert alexnet["caffemodel"] == "bvlc_alexnet.caffemodel"
    assert alexnet["sha1"] == "9116a64c0fbe4459d18f4bb6b56d647b63920377"
    assert alexnet["caffemodel_url"].startswith("http://dl.caffe.berkeleyvision.org/")
    nin = download.parse_readme((shared_models / "nin_cifar10" / "readme.md").read_text())
    assert nin["caffemodel"] == "cifar10_nin.caffemodel" and len(nin["sha1"]) == 40


def test_known_model_names_give_url_and_sha1(tmp_path, server, capsys, monkeypatch):
    """`download.py face_detector` needs no readme; --url/--sha1 still override
    (here: the local server stands in for the published file)."""
    assert set(download.KNOWN_MODELS) == {"face_detector", "mobilenet_ssd"}
    for info in download.KNOWN_MODELS.values():
        assert re.fullmatch(r"[0-9a-f]{40}", info["sha1"])
        assert info["caffemodel_url"].startswith("https://")
    monkeypatch.chdir(tmp_path)
    assert run("face_detector", "--url", server.url, "--sha1", SHA1, "--out", tmp_path) == 0
    assert (tmp_path / "res10_300x300_ssd_iter_140000.caffemodel").read_bytes() == PAYLOAD
    assert "OpenCV face detector" in capsys.readouterr().err
