#!/usr/bin/env python3
"""Download a Model Zoo caffemodel named in a model readme, verified by sha1.

    python tools/download.py MODEL_DIR_OR_README [--out DIR] [--url URL] [--sha1 HEX]
    python tools/download.py face_detector|mobilenet_ssd [--out DIR]

The readme's front matter gives ``caffemodel:`` (file name),
``caffemodel_url:`` and ``sha1:`` (older readmes list the same keys without
the ``---`` block). The file is fetched into ``<name>.part`` with a progress
line on stderr; an interrupted download is resumed with an HTTP Range
request (automatically up to ``--retries`` times, or by running the command
again). Only after the sha1 matches is the part file renamed to its final
name, so a half-written or corrupt model never appears under the real name.
A mismatch deletes the part file and exits 1; a readme without sha1 is
accepted with a loud warning. Instead of a readme, the name of a model in
``KNOWN_MODELS`` (the SSD detectors netdef's zoo_defs reproduce) gives its
published URL and sha1.

Exit codes: 0 done (or already present and verified), 1 download or
verification failed, 2 bad arguments or readme. Standard library only.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request

CHUNK = 1 << 20
RETRY_DELAY = 1.0  # seconds before the first automatic resume, doubled each time
KEYS = ("name", "caffemodel", "caffemodel_url", "sha1")

# Published weights of the SSD detectors in zoo_defs/, with the URLs and sha1
# sums OpenCV's model lists give for them (opencv_extra's
# testdata/dnn/download_models.py for the face detector; OpenCV's
# samples/dnn/models.yml, entry ssd_caffe, for MobileNet-SSD).
KNOWN_MODELS = {
    "face_detector": {
        "name": "OpenCV face detector, ResNet-10 SSD 300x300 "
                "(zoo_defs/face_detector_ssd_res10_300x300.prototxt)",
        "caffemodel": "res10_300x300_ssd_iter_140000.caffemodel",
        "caffemodel_url": "https://github.com/opencv/opencv_3rdparty/raw/"
                          "dnn_samples_face_detector_20170830/"
                          "res10_300x300_ssd_iter_140000.caffemodel",
        "sha1": "15aa726b4d46d9f023526d85537db81cbc8dd566",
    },
    "mobilenet_ssd": {
        "name": "MobileNet-SSD, VOC (zoo_defs/mobilenet_ssd_deploy.prototxt)",
        "caffemodel": "MobileNetSSD_deploy.caffemodel",
        "caffemodel_url": "https://drive.google.com/uc?export=download&"
                          "id=0B3gersZ2cHIxRm5PMWRoTkdHdHc",
        "sha1": "994d30a8afaa9e754d17d2373b2d62a7dfbaaf7a",
    },
}


class DownloadError(Exception):
    """A failure reported to the user as one line, exit code 1."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ readme ---

def parse_readme(text: str) -> dict[str, str]:
    """The ``key: value`` settings of a Model Zoo readme.

    Uses the ``---`` front matter when the readme starts with one, otherwise
    the first ``key: value`` line for each known key anywhere in the text.
    """
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if end is not None:
            lines = lines[1:end]
    info: dict[str, str] = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$", line)
        if m and m.group(1) in KEYS and m.group(2) and m.group(1) not in info:
            info[m.group(1)] = m.group(2)
    return info


def find_readme(target: str) -> str:
    if os.path.isdir(target):
        for name in ("readme.md", "README.md", "Readme.md"):
            path = os.path.join(target, name)
            if os.path.isfile(path):
                return path
        raise DownloadError(f"{target}: no readme.md in this directory")
    if not os.path.isfile(target):
        raise DownloadError(f"{target}: no such file or directory")
    return target


# ---------------------------------------------------------------- download ---

def file_sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class Progress:
    """One self-overwriting stderr line on a terminal, a few lines otherwise."""

    def __init__(self, total: int | None, start: int):
        self.total, self.start, self.t0 = total, start, time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_t, self.last_decile = 0.0, -1

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        decile = done * 10 // self.total if self.total else -1
        if not final and (now - self.last_t < 0.2 if self.tty else decile == self.last_decile):
            return
        self.last_t, self.last_decile = now, decile
        rate = (done - self.start) / max(now - self.t0, 1e-6) / 1e6
        size = f"{done / 1e6:.1f} MB"
        if self.total:
            size += f" / {self.total / 1e6:.1f} MB ({100 * done // self.total}%)"
        line = f"  {size}  {rate:.1f} MB/s"
        if self.tty:
            print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            log(line)


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "netdef-download/1"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)


def fetch(url: str, part: str, timeout: float) -> None:
    """Fetch ``url`` into ``part``, continuing from its current size if any.

    Raises OSError / HTTPException when the transfer is interrupted; the
    bytes received so far stay in ``part`` for the next attempt.
    """
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the part is complete
            return
        raise
    with resp:
        if offset and resp.status != 206:
            log("  the server ignored the Range request; starting over")
            offset = 0
        elif offset:
            start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != offset:
                raise DownloadError(f"the server resumed at the wrong offset "
                                    f"({resp.headers.get('Content-Range')}); delete {part}")
            log(f"  resuming at {offset / 1e6:.1f} MB")
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        progress = Progress(total, offset)
        done = offset
        with open(part, "ab" if offset else "wb") as f:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                done += len(block)
                progress.update(done)
            f.flush()
            os.fsync(f.fileno())
        progress.update(done, final=True)
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)


def download(url: str, dest: str, sha1: str | None, retries: int = 3,
             timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` via ``dest.part``; verify; rename. Returns dest."""
    part = dest + ".part"
    attempt = 0
    log(f"downloading {url}\n  -> {dest}")
    while True:
        try:
            fetch(url, part, timeout)
            break
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:
            have = os.path.getsize(part) if os.path.exists(part) else 0
            if attempt >= retries:
                if not have:
                    raise DownloadError(f"{url}: {e.__class__.__name__}: {e}") from None
                raise DownloadError(
                    f"download interrupted after {have / 1e6:.1f} MB ({e.__class__.__name__}: "
                    f"{e}); run the same command again to resume from {part}") from None
            attempt += 1
            log(f"  interrupted after {have / 1e6:.1f} MB ({e.__class__.__name__}); "
                f"retry {attempt}/{retries} with resume")
            time.sleep(min(RETRY_DELAY * 2 ** (attempt - 1), 30.0))
    if sha1:
        got = file_sha1(part)
        if got != sha1.lower():
            os.remove(part)
            raise DownloadError(f"sha1 mismatch for {dest}: expected {sha1.lower()}, got {got}; "
                                "the downloaded file was deleted")
        log(f"  sha1 ok ({got})")
    else:
        log("WARNING: no sha1 to check against: the downloaded file is NOT verified. "
            "Pass --sha1 if you know it.")
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------- CLI ---

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Download and sha1-verify the caffemodel named in a Model Zoo readme.")
    p.add_argument("target", metavar="MODEL_DIR_OR_README",
                   help="a model directory containing readme.md, the readme itself, or a "
                   f"known model: {', '.join(KNOWN_MODELS)}")
    p.add_argument("--out", metavar="DIR", help="where to save (default: the readme's directory)")
    p.add_argument("--url", help="download from this URL instead of caffemodel_url")
    p.add_argument("--sha1", help="expected sha1 instead of the readme's")
    p.add_argument("--retries", type=int, default=3,
                   help="automatic resumes after an interrupted transfer (default 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.target in KNOWN_MODELS and not os.path.exists(args.target):
            info = dict(KNOWN_MODELS[args.target])
            readme = os.path.join(os.getcwd(), "known-model")  # --out defaults to here
            log(f"{args.target}: {info['name']}")
        else:
            readme = find_readme(args.target)
            with open(readme, encoding="utf-8", errors="replace") as f:
                info = parse_readme(f.read())
    except (DownloadError, OSError) as e:
        log(f"download: {e}")
        return 2
    url = args.url or info.get("caffemodel_url")
    name = info.get("caffemodel") or (os.path.basename(url.split("?")[0]) if url else None)
    if not url or not name:
        log(f"download: {readme}: no caffemodel_url/caffemodel in the readme; pass --url")
        return 2
    if "." not in name:  # e.g. VGG's readme says "caffemodel: VGG_ILSVRC_16_layers"
        name += ".caffemodel"
    sha1 = args.sha1 or info.get("sha1")
    out_dir = args.out or os.path.dirname(os.path.abspath(readme))
    os.makedirs(out_dir, exist_ok=True)
    dest = os.path.join(out_dir, name)
    if os.path.exists(dest):
        if sha1 and file_sha1(dest) == sha1.lower():
            log(f"{dest} is already present and its sha1 matches")
            return 0
        log(f"{dest} exists but " + ("its sha1 does not match; downloading again" if sha1
                                      else "cannot be verified (no sha1); downloading again"))
    try:
        download(url, dest, sha1, retries=args.retries, timeout=args.timeout)
    except DownloadError as e:
        log(f"download: {e}")
        return 1
    except KeyboardInterrupt:
        log(f"\ndownload: interrupted; run the same command again to resume from {dest}.part")
        return 130
    log(f"saved {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
