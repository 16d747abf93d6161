"""The ``netdef`` command line: one subcommand per API call.

Subcommands live in ``COMMANDS``, a table from name to (setup_parser,
handler), like Caffe's ``RegisterBrewFunction``: adding ``netdef time`` is
writing two functions (the handler's docstring is its help line) and one
table entry. Results go to stdout, logs to
stderr. A NetdefError becomes one line ``netdef: error: ...`` and exit code
2 (argparse's own code for usage errors); ``--debug`` shows the traceback
instead. Ctrl-C exits 130; a closed stdout pipe (``netdef summary x | head``)
ends quietly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from netdef import __version__
from netdef.errors import NetdefError

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141     # 128 + SIGINT, 128 + SIGPIPE


def log(*parts) -> None:
    print(*parts, file=sys.stderr)


# ----------------------------------------------------- shared options ----
def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """argparse type for NAME=N,C,H,W."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    # positive, and no axis past int32: the prototxt's sizes get the same rule
    if not sep or not name or not shape or any(d <= 0 or d > 2**31 - 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected NAME=N,C,H,W with positive integers, got {text!r}")
    return name, shape


def add_net_state(p: argparse.ArgumentParser, phase_default: str | None = "TEST") -> None:
    p.add_argument("--phase", type=str.upper, choices=("TRAIN", "TEST"), default=phase_default,
                   help=f"net phase (default: {phase_default or 'both TRAIN and TEST'})")
    p.add_argument("--level", type=int, default=0, help="net state level (default: 0)")
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="net state stage; repeat for several")


def add_input_shapes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=input_shape, action="append", default=[],
                   metavar="NAME=N,C,H,W",
                   help="shape of an input or data top; repeat for several")


def shapes_of(args) -> dict[str, tuple[int, ...]] | None:
    return dict(args.input_shape) if args.input_shape else None


# ------------------------------------------------------------ summary ----
def setup_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("net", help="net prototxt (any Caffe format)")
    add_net_state(p)
    add_input_shapes(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")


def run_summary(args) -> int:
    """Table of layers, shapes, parameters and MACs."""
    from netdef.summary import print_summary, summarize

    s = summarize(args.net, args.phase, shapes_of(args), args.level, args.stage)
    if args.json:
        print(json.dumps(s.to_json(), indent=2))
    else:
        print_summary(s, width=None if sys.stdout.isatty() else 10_000)
    return EXIT_OK


# --------------------------------------------------------------- draw ----
def setup_draw(p: argparse.ArgumentParser) -> None:
    p.add_argument("net", help="net prototxt (any Caffe format)")
    p.add_argument("out", help="picture to write: .svg, .png, .pdf, or .dot (no Graphviz needed)")
    p.add_argument("--rankdir", choices=("TB", "LR", "BT", "RL"), default="TB",
                   help="direction of the layout (default: TB, top to bottom)")
    p.add_argument("--display-lr", action="store_true",
                   help="show lr_mult/decay_mult of every parameter blob")
    add_net_state(p)
    add_input_shapes(p)


def run_draw(args) -> int:
    """Draw the net with Graphviz (.dot needs no Graphviz)."""
    from netdef.draw import draw

    fmt = draw(args.net, args.out, args.rankdir, args.phase, args.display_lr,
               shapes_of(args), args.level, args.stage)
    log(f"wrote {args.out} ({fmt})")
    return EXIT_OK


# -------------------------------------------------------------- check ----
def setup_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("net", help="net prototxt (any Caffe format)")
    add_net_state(p, phase_default=None)
    add_input_shapes(p)


def run_check(args) -> int:
    """Report every problem in a net, with its file:line:col."""
    from netdef.check import check, has_errors

    findings = check(args.net, args.phase, shapes_of(args), args.level, args.stage)
    for f in findings:
        print(f)
    errors = sum(f.severity == "error" for f in findings)
    log(f"{args.net}: {errors} error(s), {len(findings) - errors} warning(s)")
    return EXIT_FINDINGS if has_errors(findings) else EXIT_OK


# ------------------------------------------------------------ upgrade ----
def setup_upgrade(p: argparse.ArgumentParser) -> None:
    p.add_argument("old", help="net prototxt in any format (V0, V1, input header, current)")
    p.add_argument("new", help="where to write the current-format net")


def run_upgrade(args) -> int:
    """Rewrite a V0/V1/input-header net in the current format."""
    from netdef.frontend.source import upgrade_file

    for line in upgrade_file(args.old, args.new):
        log(line)
    return EXIT_OK


# ------------------------------------------------------------- deploy ----
def setup_deploy(p: argparse.ArgumentParser) -> None:
    p.add_argument("train_val", help="train/val net prototxt")
    p.add_argument("deploy", help="where to write the derived deploy prototxt")
    p.add_argument("--batch", type=int, help="batch size of the Input layer")
    add_input_shapes(p)


def run_deploy(args) -> int:
    """Derive a deploy net from a train_val net."""
    from netdef.deploy import make_deploy
    from netdef.frontend.source import write_net

    param = make_deploy(args.train_val, shapes_of(args), args.batch)
    write_net(param, args.deploy)
    log(f"wrote {args.deploy} ({len(param.layer)} layers)")
    return EXIT_OK


# ---------------------------------------------------------------- run ----
def setup_run(p: argparse.ArgumentParser) -> None:
    from netdef import run

    run.setup_run(p)


def run_run(args) -> int:
    """Classify images: top-k labels and probabilities per image."""
    from netdef import run

    return run.cmd_run(args)


# ------------------------------------------------------------- detect ----
def setup_detect(p: argparse.ArgumentParser) -> None:
    from netdef import detect

    detect.setup_detect(p)


def run_detect(args) -> int:
    """Detect objects (SSD nets: faces, VOC classes): one line per box, or --draw them."""
    from netdef import detect

    return detect.cmd_detect(args)


# --------------------------------------------------------------- time ----
def setup_time(p: argparse.ArgumentParser) -> None:
    p.add_argument("net", help="net prototxt (any Caffe format)")
    p.add_argument("--weights", help=".caffemodel to load (default: seeded random weights)")
    p.add_argument("--iterations", type=int, default=50, help="timed passes (default: 50)")
    p.add_argument("--batch", type=int, help="batch size of the inputs (default: the net's)")
    p.add_argument("--threads", type=int, metavar="N", help="kernel threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    add_net_state(p)
    add_input_shapes(p)


def run_time(args) -> int:
    """Mean forward (and backward) time of every layer and of the net (like caffe time)."""
    from netdef.net import Net
    from netdef.run import set_threads
    from netdef.timing import time_net

    if args.iterations < 1:
        raise NetdefError("--iterations must be at least 1")
    if args.batch is not None and args.batch < 1:
        raise NetdefError(f"--batch must be at least 1, got {args.batch}")
    if args.threads is not None:
        set_threads(args.threads)
    net = Net(args.net, args.weights, args.phase, input_shapes=shapes_of(args),
              level=args.level, stages=args.stage, optimize=True)
    if args.batch:
        for name in net._inst.source_tops():
            blob = net.blobs[name]
            blob.reshape((args.batch,) + blob.shape[1:])
    report = time_net(net, args.iterations, bar=None, log=log)
    for line in net.plan_log:           # what the compiler did: fusion, memory saved
        log(line)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return EXIT_OK


# ------------------------------------------------------------- warmup ----
def setup_warmup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print only the total")


def run_warmup(args) -> int:
    """Compile every kernel once into the Numba cache (first-run cost)."""
    from netdef.kernels import warmup_command

    print(warmup_command(quiet=args.quiet))
    return EXIT_OK


# ------------------------------------------------------------ convert ----
def setup_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("npy", help="pickled weight dict of the TensorFlow AlexNet port (.npy)")
    p.add_argument("net", help="the Caffe net whose layers the weights belong to")
    p.add_argument("out", help=".caffemodel to write")
    p.add_argument("--fc-input", metavar="C,H,W",
                   help="shape feeding the first fc layer (default: derived from the net)")


def run_convert(args) -> int:
    """Convert a TensorFlow AlexNet-port .npy weight dict to a .caffemodel."""
    from netdef.frontend.source import read_net
    from netdef.io.convert import convert_npy_to_caffemodel

    fc_shape = None
    if args.fc_input:
        try:
            fc_shape = tuple(int(d) for d in args.fc_input.split(","))
        except ValueError:
            raise NetdefError(f"--fc-input expects C,H,W, got {args.fc_input!r}") from None
    weights = convert_npy_to_caffemodel(args.npy, read_net(args.net).param, args.out,
                                        fc_input_shape=fc_shape)
    log(f"wrote {args.out} ({len(weights)} layers)")
    return EXIT_OK


# --------------------------------------------- convert-imageset / mean ----
def setup_convert_imageset(p: argparse.ArgumentParser) -> None:
    p.usage = "netdef convert-imageset [options] [ROOT] LIST_OR_FOLDER OUT_LMDB"
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="ROOT LISTFILE OUT_LMDB (Caffe's order; ROOT is prefixed to the "
                        "list's paths), or LISTFILE OUT_LMDB, or FOLDER OUT_LMDB with one "
                        "subfolder per class (labels: sorted subfolder index)")
    p.add_argument("--resize-height", type=int, default=0, metavar="H",
                   help="resize every image to H x W (give both)")
    p.add_argument("--resize-width", type=int, default=0, metavar="W")
    p.add_argument("--gray", action="store_true", help="store one gray channel")
    p.add_argument("--shuffle", action="store_true", help="shuffle the order (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default: 0)")
    p.add_argument("--encoded", action="store_true",
                   help="store encoded images (the files themselves when no resize is asked)")
    p.add_argument("--encode-type", default="", metavar="EXT",
                   help="png or jpg for --encoded (default: each file's own)")
    p.add_argument("--check-size", action="store_true",
                   help="stop when an image's size differs from the first's")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_convert_imageset(args) -> int:
    """Build an LMDB of Datum records from images (Caffe's convert_imageset)."""
    from netdef.data.imageset import convert_imageset

    if len(args.paths) not in (2, 3):
        raise NetdefError(f"convert-imageset takes [ROOT] LIST_OR_FOLDER OUT_LMDB, got "
                          f"{len(args.paths)} paths")
    *head, out = args.paths
    root, listing = (head[0], head[1]) if len(head) == 2 else ("", head[0])
    report = convert_imageset(listing, root, out, resize_height=args.resize_height,
                              resize_width=args.resize_width, gray=args.gray,
                              shuffle=args.shuffle, encoded=args.encoded,
                              encode_type=args.encode_type, seed=args.seed,
                              check_size=args.check_size,
                              progress=False if args.quiet else None)
    for label, name in enumerate(report.classes):
        log(f"label {label}: {name}")
    log(str(report))
    return EXIT_OK


def setup_compute_image_mean(p: argparse.ArgumentParser) -> None:
    p.add_argument("lmdb", help="LMDB of Datum records (e.g. from convert-imageset)")
    p.add_argument("out", nargs="?", help=".binaryproto to write (optional)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_compute_image_mean(args) -> int:
    """Mean image of an LMDB as a .binaryproto (Caffe's compute_image_mean)."""
    from netdef.data.imageset import compute_image_mean

    mean = compute_image_mean(args.lmdb, args.out, progress=False if args.quiet else None)
    values = mean.mean(axis=(1, 2), dtype="float64")
    print("mean_value per channel: " + ", ".join(f"{v:.4f}" for v in values))
    if args.out:
        log(f"wrote {args.out} (mean of shape {tuple(mean.shape)})")
    return EXIT_OK


# ------------------------------------------------ train / test / plot-log ----
def setup_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", required=True, help="solver prototxt")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--weights", help="fine-tune from .caffemodel weights, copied by layer "
                       "name (comma-separated for several)")
    start.add_argument("--snapshot", help="resume from a .solverstate")
    p.add_argument("--log-file", metavar="LOG",
                   help="machine-readable log: .csv, else JSON lines (iteration, loss, lr, "
                        "test scores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no log lines")
    p.add_argument("--sigint-effect", choices=("stop", "snapshot", "none"), default="stop",
                   help="on Ctrl-C (default: stop, after a snapshot)")
    p.add_argument("--sighup-effect", choices=("stop", "snapshot", "none"), default="snapshot",
                   help="on SIGHUP (default: snapshot and go on)")
    p.add_argument("--threads", type=int, metavar="N", help="kernel threads")


def run_train(args) -> int:
    """Train a net with a solver prototxt (like caffe train)."""
    from netdef.train import get_solver
    from netdef.train.console import TrainConsole
    from netdef.train.logfile import LogWriter

    if args.threads is not None:
        from netdef.run import set_threads

        set_threads(args.threads)
    console = TrainConsole(quiet=args.quiet)
    try:
        solver = get_solver(args.solver, log=console.log, sigint_effect=args.sigint_effect,
                            sighup_effect=args.sighup_effect)
        solver.add_callback(console)
        if args.weights:
            solver.load_weights(args.weights)
        writer = None
        if args.log_file:
            writer = LogWriter(args.log_file, append=bool(args.snapshot))
            solver.add_callback(writer)
        try:
            solver.solve(resume=args.snapshot)
        finally:
            if writer is not None:
                writer.close()
    finally:
        console.close()
    if solver.last_snapshot:
        log(f"last snapshot: {solver.last_snapshot}")
    return EXIT_INTERRUPTED if solver.requested_early_exit else EXIT_OK


def setup_test(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="net prototxt with data layers")
    p.add_argument("--weights", required=True, help=".caffemodel to score")
    p.add_argument("--iterations", type=int, default=50, help="batches (default: 50)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument("--threads", type=int, metavar="N", help="kernel threads")
    add_net_state(p)


def run_test(args) -> int:
    """Mean of every output blob over N batches (like caffe test)."""
    from netdef.train.evaluate import evaluate

    if args.threads is not None:
        from netdef.run import set_threads

        set_threads(args.threads)
    report = evaluate(args.model, args.weights, args.iterations, args.phase, args.level,
                      args.stage, log=log)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return EXIT_OK


def setup_plot_log(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", help="a --log-file of netdef train (.jsonl/.csv), or a text log")
    p.add_argument("out", help="picture to write (.png, .svg, .pdf)")
    p.add_argument("--title", help="title of the figure (default: the log's name)")


def run_plot_log(args) -> int:
    """Draw the loss and accuracy curves of a training log."""
    from netdef.train.plot import plot_log

    curves = plot_log(args.log, args.out, args.title)
    log(f"wrote {args.out} ({', '.join(curves)})")
    return EXIT_OK


# ------------------------------------------------------------ pycaffe ----
def setup_pycaffe(p: argparse.ArgumentParser) -> None:
    p.add_argument("script", help="a pycaffe script (import caffe ...), run unmodified")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")


def run_pycaffe(args) -> int:
    """Run a pycaffe script unmodified: its `import caffe` gets netdef."""
    from netdef.compat.runner import run

    return run(args.script, args.args)


# -------------------------------------------------------- the table ----
# name -> (setup_parser, handler); the handler's docstring is the help line.
COMMANDS = {
    "summary": (setup_summary, run_summary),
    "draw": (setup_draw, run_draw),
    "check": (setup_check, run_check),
    "upgrade": (setup_upgrade, run_upgrade),
    "deploy": (setup_deploy, run_deploy),
    "run": (setup_run, run_run),
    "detect": (setup_detect, run_detect),
    "time": (setup_time, run_time),
    "warmup": (setup_warmup, run_warmup),
    "convert": (setup_convert, run_convert),
    "convert-imageset": (setup_convert_imageset, run_convert_imageset),
    "compute-image-mean": (setup_compute_image_mean, run_compute_image_mean),
    "train": (setup_train, run_train),
    "test": (setup_test, run_test),
    "plot-log": (setup_plot_log, run_plot_log),
    "pycaffe": (setup_pycaffe, run_pycaffe),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netdef", description="Caffe-compatible network compiler and CPU runtime.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of errors instead of one line")
    parser.add_argument("--version", action="version", version=f"netdef {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # --debug is accepted after the subcommand too (SUPPRESS keeps the global value).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of errors instead of one line")
    for name, (setup, handler) in COMMANDS.items():
        about = handler.__doc__.strip().splitlines()[0] if handler.__doc__ else None
        p = sub.add_parser(name, help=about, description=about, parents=[common])
        setup(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv=None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:          # --help (0) or a usage error (2)
        return int(stop.code or 0)
    try:
        code = args.handler(args)
        sys.stdout.flush()
        return code
    except NetdefError as err:
        if args.debug:
            traceback.print_exc()
        else:
            log(f"netdef: error: {_one_line(str(err))}")
        return EXIT_ERROR
    except OSError as err:              # e.g. an unwritable output path
        if isinstance(err, BrokenPipeError):
            return _broken_pipe()
        if args.debug:
            traceback.print_exc()
        else:
            log(f"netdef: error: {_one_line(_os_message(err))}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        log("netdef: interrupted")
        return EXIT_INTERRUPTED


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


def _os_message(err: OSError) -> str:
    if err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


def _broken_pipe() -> int:
    # The reader went away (``| head``). Point stdout at devnull so the
    # interpreter's final flush does not raise again, and stop quietly.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_PIPE


if __name__ == "__main__":      # pragma: no cover
    sys.exit(main())
