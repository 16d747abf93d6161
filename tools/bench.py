#!/usr/bin/env python3
"""Forward-latency benchmark: netdef against OpenCV DNN on the same files.

Both engines load the same prototxt and the same (seeded random) weights,
saved once as a .caffemodel, and run the same input. Runs alternate between
the engines (netdef, OpenCV, netdef, ...) so that drift of the machine
affects both alike. Prints median and range in ms, achieved GFLOP/s
(2 x multiply-accumulates of conv and dense layers / time), and the ratio
netdef / OpenCV (below 1.0: netdef is faster).

    python tools/bench.py                     # the standard table
    python tools/bench.py --nets alexnet:1 resnet50:1 --repeat 20
    python tools/bench.py --markdown          # table for README.md
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NETS = {
    "alexnet": "alexnet_deploy.prototxt",
    "googlenet": "googlenet_deploy.prototxt",
    "resnet50": "resnet50_deploy.prototxt",
    "squeezenet": "squeezenet_v1_1_deploy.prototxt",
    "vgg16": "vgg16_deploy.prototxt",
    "nin": "nin_imagenet_deploy.prototxt",
}
DEFAULT = ["alexnet:1", "alexnet:10", "googlenet:1", "resnet50:1", "squeezenet:1"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_one(key: str, batch: int, repeat: int, warmup: int, threads: int, workdir):
    import cv2
    import numpy as np

    from netdef.net import Net
    from netdef.summary import summarize
    from netdef.testing import randomize_weights

    proto = ROOT / "zoo_defs" / NETS[key]
    net = Net(str(proto), optimize=True)
    randomize_weights(net, seed=1)
    weights = pathlib.Path(workdir) / f"{key}.caffemodel"
    net.save(str(weights))
    shape = (batch,) + tuple(net.input_shape()[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    macs = summarize(str(proto), input_shapes={net.inputs[0]: shape}).total_macs

    cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def run_netdef():
        net.forward(**{net.inputs[0]: x})

    def run_cv():
        cv_net.setInput(x)
        cv_net.forward()

    for _ in range(warmup):
        run_netdef()
        run_cv()
    times = {"netdef": [], "opencv": []}
    for _ in range(repeat):
        for name, fn in (("netdef", run_netdef), ("opencv", run_cv)):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return macs, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=DEFAULT,
                        help="NAME:BATCH items; names: " + ", ".join(NETS))
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    import cv2
    import numba

    numba.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.nets:
            key, _, batch = item.partition(":")
            batch = int(batch or 1)
            log(f"bench: {key} batch {batch} ...")
            macs, times = bench_one(key, batch, args.repeat, args.warmup, args.threads, tmp)
            nd, cv = statistics.median(times["netdef"]), statistics.median(times["opencv"])
            rows.append((f"{key} b{batch}", macs, times, nd / cv))

    header = ("net", "netdef ms (min-max)", "GFLOP/s", "OpenCV ms (min-max)", "GFLOP/s",
              "netdef/OpenCV")
    lines = []
    for name, macs, times, ratio in rows:
        cells = [name]
        for engine in ("netdef", "opencv"):
            t = times[engine]
            med = statistics.median(t)
            cells.append(f"{med:.1f} ({min(t):.1f}-{max(t):.1f})")
            cells.append(f"{2 * macs / (med / 1e3) / 1e9:.0f}")
        cells.append(f"{ratio:.2f}")
        lines.append(cells)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
        for cells in [header, *lines]:
            print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
