#!/usr/bin/env python3
"""Benchmarks: forward latency against OpenCV DNN, training steps against PyTorch.

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
    python tools/bench.py --train             # training steps: netdef vs PyTorch CPU

Training (``--train``): one step is forward + backward + an SGD-with-momentum
update, batch N, on the zoo deploy net turned into a training net (the
softmax becomes SoftmaxWithLoss against random labels; dropout is active).
PyTorch runs the same architecture (Caffe's ceil-mode pooling, LRN and
grouped convolutions) in its own worker. Each worker reports its step times
and its peak resident memory (ru_maxrss, the whole process) and the peak
above the resident memory it had before its first step.
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
    "face_ssd": "face_detector_ssd_res10_300x300.prototxt",
    "mobilenet_ssd": "mobilenet_ssd_deploy.prototxt",
    "mobilenet_v1": "mobilenet_v1_deploy.prototxt",
    "mobilenet_v2": "mobilenet_v2_deploy.prototxt",
}
DEFAULT = ["alexnet:1", "alexnet:10", "googlenet:1", "resnet50:1", "squeezenet:1"]
# --mobile: the deployed detectors and mobile classifiers (issue 8), batch 1
MOBILE = ["face_ssd:1", "mobilenet_ssd:1", "mobilenet_v1:1", "mobilenet_v2:1"]
TRAIN_NETS = {"lenet": "lenet.prototxt", "alexnet": "alexnet_deploy.prototxt"}
TRAIN_DEFAULT = ["lenet:64", "alexnet:32"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _worker(engine: str, key: str, batch: int, threads: int, workdir: str) -> None:
    """One engine in its own process: load, then time one forward per 'run' line.

    Separate processes keep the engines' thread pools apart: in one process,
    OpenCV's spinning workers and netdef's BLAS/Numba threads would slow
    each other down, and the numbers would measure the interference.
    """
    if engine == "netdef":
        import netdef  # noqa: F401  (before numpy, as the CLI does: it sets the BLAS thread policy)
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


# ------------------------------------------------------------ training ----

def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_source(key: str, batch: int):
    """The zoo deploy net as a training net: data + label inputs, the final
    Softmax replaced by SoftmaxWithLoss."""
    from netdef.frontend.schema import pb
    from netdef.frontend.source import read_net

    source = read_net(str(ROOT / "zoo_defs" / TRAIN_NETS[key]))
    param = source.param
    net = pb.NetParameter()
    net.CopyFrom(param)
    del net.layer[:]
    for layer in param.layer:
        if layer.type == "Input":
            shape = layer.input_param.shape[0]
            shape.dim[0] = batch
            label = layer.input_param.shape.add()
            label.dim.append(batch)
            layer.top.append("label")
        if layer.type == "Softmax":
            loss = net.layer.add(name="loss", type="SoftmaxWithLoss")
            loss.bottom.extend([layer.bottom[0], "label"])
            loss.top.append("loss")
            continue
        net.layer.add().CopyFrom(layer)
    return net


def _torch_model(key: str):
    import torch
    from torch import nn

    if key == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2, ceil_mode=True), nn.Flatten(),
            nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, 10)), (1, 28, 28), 10
    lrn = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)
    model = nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.ReLU(inplace=True), nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True),
        nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 1000))
    del torch
    return model, (3, 227, 227), 1000


def _train_worker(engine: str, key: str, batch: int, threads: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    if engine == "netdef":
        import numba

        from netdef.frontend.schema import pb
        from netdef.testing import randomize_weights
        from netdef.train import get_solver

        numba.set_num_threads(threads)
        solver_param = pb.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=5e-4,
                                          lr_policy="fixed", max_iter=1 << 30, display=0,
                                          type="SGD", random_seed=1)
        solver_param.net_param.CopyFrom(_train_source(key, batch))
        solver = get_solver(solver_param, log=lambda msg: None)
        net = solver.net
        randomize_weights(net, seed=1)
        shape = net.blobs["data"].shape
        classes = 10 if key == "lenet" else 1000
        net.blobs["data"].data[...] = rng.standard_normal(shape).astype(np.float32)
        net.blobs["label"].data[...] = rng.integers(0, classes, batch)

        def step():
            solver.step(1)
    else:
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model, chw, classes = _torch_model(key)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
        loss_fn = torch.nn.CrossEntropyLoss()
        x = torch.from_numpy(rng.standard_normal((batch, *chw)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, classes, batch))

        def step():
            opt.zero_grad(set_to_none=False)
            loss_fn(model(x), y).backward()
            opt.step()

    base = _rss_mib()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0 = time.perf_counter()
        step()
        print(f"{(time.perf_counter() - t0) * 1e3:.4f}", flush=True)
    print(f"{_peak_mib():.1f} {_peak_mib() - base:.1f}", flush=True)


def bench_train(key: str, batch: int, repeat: int, warmup: int, threads: int):
    workers = Workers("--train-worker", ("netdef", "torch"), (key, batch, threads), threads)
    try:
        times = workers.alternate(repeat, warmup)
    finally:
        last = workers.close()
    memory = {engine: tuple(float(v) for v in line.split()) for engine, line in last.items()}
    return times, memory


def train_table(items, repeat, warmup, threads, markdown) -> None:
    header = ("net", "netdef ms/step", "PyTorch ms/step", "netdef/PyTorch",
              "netdef peak MiB (step)", "PyTorch peak MiB (step)")
    lines = []
    for item in items:
        key, _, batch = item.partition(":")
        batch = int(batch or 1)
        log(f"bench: training {key} batch {batch} ...")
        times, memory = bench_train(key, batch, repeat, warmup, threads)
        nd, pt = statistics.median(times["netdef"]), statistics.median(times["torch"])
        lines.append([f"{key} b{batch}", f"{nd:.1f}", f"{pt:.1f}", f"{nd / pt:.2f}",
                      f"{memory['netdef'][0]:.0f} (+{memory['netdef'][1]:.0f})",
                      f"{memory['torch'][0]:.0f} (+{memory['torch'][1]:.0f})"])
    _print_table(header, lines, markdown)


def _print_table(header, lines, markdown) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
        for cells in [header, *lines]:
            print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))


def _input_shape(proto: str) -> tuple:
    from netdef.summary import summarize

    s = summarize(proto)
    return next(layer.top_shapes[0] for layer in s.layers if layer.type == "Input")


class Workers:
    """One worker process per engine, driven line by line over pipes: each
    "run" line is answered with one time in ms. Runs alternate between the
    engines so that drift of the machine affects both alike."""

    def __init__(self, flag: str, engines, args, threads: int):
        import subprocess

        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads))
        self.procs = {}
        for engine in engines:
            cmd = [sys.executable, __file__, flag, engine, *map(str, args)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, env=env)
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"bench: the {engine} worker failed to start")
            self.procs[engine] = proc

    def once(self, engine: str) -> float:
        proc = self.procs[engine]
        proc.stdin.write("run\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    def alternate(self, repeat: int, warmup: int) -> dict[str, list[float]]:
        times = {engine: [] for engine in self.procs}
        for _ in range(warmup):
            for engine in self.procs:
                self.once(engine)
        for _ in range(repeat):
            for engine in self.procs:
                # let the other engine's idle workers go to sleep first: OpenBLAS's
                # spin for up to ~0.1 s after a GEMM and would slow this run
                time.sleep(0.25)
                times[engine].append(self.once(engine))
        return times

    def close(self) -> dict[str, str]:
        """Stop every worker; returns the last line each printed."""
        last = {}
        for engine, proc in self.procs.items():
            proc.stdin.write("stop\n")
            proc.stdin.close()
            last[engine] = proc.stdout.readline().strip()
            proc.wait()
        return last


def bench_one(key: str, batch: int, repeat: int, warmup: int, threads: int, workdir):

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

    workers = Workers("--worker", ("netdef", "opencv"), (key, batch, threads, workdir), threads)
    try:
        times = workers.alternate(repeat, warmup)
    finally:
        workers.close()
    return macs, times


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        engine, key, batch, threads, workdir = sys.argv[2:7]
        _worker(engine, key, int(batch), int(threads), workdir)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--train-worker":
        engine, key, batch, threads = sys.argv[2:6]
        _train_worker(engine, key, int(batch), int(threads))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=DEFAULT,
                        help="NAME:BATCH items; names: " + ", ".join(NETS))
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--mobile", action="store_true",
                        help="bench " + " ".join(MOBILE) + " instead of --nets")
    parser.add_argument("--train", action="store_true",
                        help="training steps against PyTorch (nets: lenet, alexnet; "
                             "default " + " ".join(TRAIN_DEFAULT) + ")")
    args = parser.parse_args()
    if args.train:
        nets = args.nets if args.nets != DEFAULT else TRAIN_DEFAULT
        train_table(nets, args.repeat, args.warmup, args.threads, args.markdown)
        return 0

    rows = []
    nets = MOBILE if args.mobile else args.nets
    with tempfile.TemporaryDirectory() as tmp:
        for item in nets:
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
    _print_table(header, lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
