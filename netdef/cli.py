"""The ``netdef`` command line: one subcommand per API call.

Subcommands live in ``COMMANDS``, a table from name to (setup_parser,
handler), like Caffe's ``RegisterBrewFunction``: adding ``netdef time`` is
writing two functions and one table entry. Results go to stdout, logs to
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
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected NAME=N,C,H,W with non-negative integers, got {text!r}")
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
    from netdef.frontend import upgrade_file

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
    from netdef.deploy import make_deploy
    from netdef.frontend import write_net

    param = make_deploy(args.train_val, shapes_of(args), args.batch)
    write_net(param, args.deploy)
    log(f"wrote {args.deploy} ({len(param.layer)} layers)")
    return EXIT_OK


# -------------------------------------------------------- the table ----
COMMANDS = {
    "summary": (setup_summary, run_summary,
                "table of layers, shapes, parameters and MACs"),
    "draw": (setup_draw, run_draw, "draw the net with Graphviz"),
    "check": (setup_check, run_check, "report every problem in a net (lint)"),
    "upgrade": (setup_upgrade, run_upgrade, "rewrite a V0/V1/legacy net in the current format"),
    "deploy": (setup_deploy, run_deploy, "derive a deploy net from a train_val net"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netdef", description="Caffe-compatible network compiler and CPU runtime.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of errors instead of one line")
    parser.add_argument("--version", action="version", version=f"netdef {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (setup, handler, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
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
