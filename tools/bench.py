#!/usr/bin/env python3
"""Forward-latency benchmark: netdef against OpenCV DNN on the same files.

Both engines load the same prototxt and the same (seeded random) weights,
saved once as a .caffemodel, and run the same input, each in its own worker
process (so their thread pools do not fight). Runs alternate between the
engines (netdef, OpenCV, netdef, ...) so that drift of the machine affects
both alike. Prints median and range in ms, achieved GFLOP/s
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


def _worker(engine: str, key: str, batch: int, threads: int, workdir: str) -> None:
    """One engine in its own process: load, then time one forward per 'run' line.

    Separate processes keep the engines' thread pools apart: in one process,
    OpenCV's spinning workers and netdef's BLAS/Numba threads would slow
    each other down, and the numbers would measure the interference.
    """
    import numpy as np

    proto = str(ROOT / "zoo_defs" / NETS[key])
    weights = pathlib.Path(workdir) / f"{key}.caffemodel"
    x = np.random.default_rng(0).standard_normal(
        (batch,) + tuple(_input_shape(proto)[1:])).astype(np.float32)
    if engine == "netdef":
        from netdef.net import Net  # first: it configures the thread pools

        import numba

        numba.set_num_threads(threads)
        net = Net(proto, weights=str(weights), optimize=True)
        name = net.inputs[0]

        def forward():
            net.forward(**{name: x})
    else:
        import cv2

        cv2.setNumThreads(threads)
        peer = cv2.dnn.readNetFromCaffe(proto, str(weights))
        peer.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        peer.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

        def forward():
            peer.setInput(x)
            peer.forward()

    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0 = time.perf_counter()
        forward()
        print(f"{(time.perf_counter() - t0) * 1e3:.4f}", flush=True)


def _input_shape(proto: str) -> tuple:
    from netdef.summary import summarize

    s = summarize(proto)
    return next(layer.top_shapes[0] for layer in s.layers if layer.type == "Input")


def bench_one(key: str, batch: int, repeat: int, warmup: int, threads: int, workdir):
    import subprocess

    from netdef.net import Net
    from netdef.summary import summarize
    from netdef.testing import randomize_weights

    proto = ROOT / "zoo_defs" / NETS[key]
    net = Net(str(proto))
    randomize_weights(net, seed=1)
    net.save(str(pathlib.Path(workdir) / f"{key}.caffemodel"))
    shape = (batch,) + tuple(net.input_shape()[1:])
    macs = summarize(str(proto), input_shapes={net.inputs[0]: shape}).total_macs
    del net

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    workers = {}
    for engine in ("netdef", "opencv"):
        cmd = [sys.executable, __file__, "--worker", engine, key, str(batch), str(threads), workdir]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=env)
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"bench: the {engine} worker failed to start")
        workers[engine] = proc

    def once(engine: str) -> float:
        proc = workers[engine]
        proc.stdin.write("run\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    times = {"netdef": [], "opencv": []}
    try:
        for _ in range(warmup):
            for engine in workers:
                once(engine)
        for _ in range(repeat):
            for engine in workers:
                time.sleep(0.02)      # let the other engine's idle workers settle
                times[engine].append(once(engine))
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()
    return macs, times


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        engine, key, batch, threads, workdir = sys.argv[2:7]
        _worker(engine, key, int(batch), int(threads), workdir)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=DEFAULT,
                        help="NAME:BATCH items; names: " + ", ".join(NETS))
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

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
