"""``netdef run``: classify images with a net, like Caffe's classify.py.

    netdef run deploy.prototxt cat.jpg --weights bvlc_reference_caffenet.caffemodel \\
        --mean ilsvrc_2012_mean.npy --crop

Each image is loaded and preprocessed as pycaffe does (netdef.images), the
images go through the net in batches of ``--batch``, and the top-k classes of
the output blob are printed per image (stdout; ``--json`` for a list of
objects). Everything that is not a result -- the preprocessing applied, the
random-weights warning, notes, the progress bar -- goes to stderr.

Labels are looked up in this order: ``--labels FILE``, ``$NETDEF_LABELS``,
then ``zoo_defs/synset_words.txt`` of the source checkout; a file is used
only when its line count equals the number of classes, otherwise indices
are printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys

import numpy as np

from netdef.errors import InputError, did_you_mean

SYNSET_WORDS = pathlib.Path(__file__).resolve().parents[1] / "zoo_defs" / "synset_words.txt"
RESIZE_FOR_CROP = 256   # Caffe classify.py's default --images_dim 256,256


def _log(msg: str) -> None:
    print(f"netdef run: {msg}", file=sys.stderr)


# ------------------------------------------------------------- parser ----

def setup_run(p: argparse.ArgumentParser) -> None:
    """Options of ``netdef run`` (cli.COMMANDS calls this with the subparser)."""
    p.add_argument("net", help="deploy prototxt (an Input layer or input: header)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any Pillow format)")
    p.add_argument("--weights", metavar="FILE", help=".caffemodel; without it the weights are RANDOM")
    p.add_argument("--strict", action="store_true",
                   help="refuse a weight blob that fits only after a reshape")
    p.add_argument("--verbose", action="store_true",
                   help="report the weight loading layer by layer")
    p.add_argument("--labels", metavar="FILE", help="one label per line (default: $NETDEF_LABELS, then "
                   "zoo_defs/synset_words.txt for 1000 classes)")
    p.add_argument("--top-k", type=_positive, default=5, metavar="K", help="classes shown per image (default: 5)")
    p.add_argument("--mean", metavar="FILE|B,G,R",
                   help="mean image (.binaryproto or .npy) or per-channel values")
    p.add_argument("--crop", action="store_true",
                   help="resize to --resize (default 256x256) then center-crop to the input, "
                   "like Caffe's classifier; without it images are resized to the input")
    p.add_argument("--resize", type=_pair, metavar="H,W",
                   help="size to resize to before --crop (default: 256,256; inputs over 256 get 8/7 of their size)")
    p.add_argument("--input-blob", metavar="NAME", help="net input to feed (default: the first)")
    p.add_argument("--output-blob", metavar="NAME", help="blob to rank (default: the net's last output)")
    p.add_argument("--batch", type=_positive, default=1, metavar="N", help="images per forward pass (default: 1)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.add_argument("--save-blob", action="append", default=[], metavar="NAME=FILE.npy",
                   help="save a blob for all images as .npy; repeat for several")
    p.add_argument("--threads", type=int, metavar="N", help="threads for kernels and BLAS (default: all cores)")
    p.add_argument("--raw-scale", type=float, default=255.0, metavar="S",
                   help="multiply [0,1] pixels by this (default: 255)")
    p.add_argument("--channel-swap", type=_ints, metavar="2,1,0",
                   help="channel order from RGB (default: 2,1,0, i.e. BGR, for 3 channels)")
    p.add_argument("--input-scale", type=float, metavar="S", help="multiply by this after the mean")
    p.add_argument("--progress", action="store_true",
                   help="show the progress bar even when stderr is not a terminal")


def add_run_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``run`` on an ``add_subparsers()`` object."""
    p = subparsers.add_parser("run", help="classify images", description=__doc__.split("\n")[0])
    setup_run(p)
    p.set_defaults(handler=cmd_run)
    return p


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 2,1,0, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _pair(text: str) -> tuple[int, int]:
    values = _ints(text)
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}")
    return values


# ------------------------------------------------------------ command ----

def cmd_run(args) -> int:
    saves = [_save_spec(s) for s in args.save_blob]
    for path in args.images:   # fail before loading the net, not after N batches
        if not os.path.exists(path):
            raise InputError("image file not found", where=path)
    if args.threads is not None:
        set_threads(args.threads)
    net, input_blob, output_blob = _open_net(args, [name for name, _ in saves])
    prep = _preprocessor(args, net.input_shape(input_blob), input_blob)
    _log(f"preprocessing: {prep.summary()}")
    scores, saved = _forward_all(net, prep, args, input_blob, output_blob, saves)
    out_shape = net.blobs[output_blob].shape
    if math.prod(out_shape[2:]) > 1:
        _log(f"note: '{output_blob}' has shape {out_shape}; ranking all "
             f"{math.prod(out_shape[1:])} values of each image as classes")
    bad = int((~np.isfinite(scores)).any(axis=1).sum())
    if bad:
        _log(f"WARNING: '{output_blob}' holds NaN or infinite values for {bad} of "
             f"{len(scores)} image(s): the results below are MEANINGLESS (non-finite weights, "
             "or an input or layer that overflows)")
    if scores.shape[1] == 1:
        probs, squashed = binary_probabilities(scores)
        _log(f"note: '{output_blob}' has one value per image: a binary probability p of "
             "class 1, shown with 1 - p for class 0" +
             (f" (values outside [0, 1]: showing sigmoid({output_blob}))" if squashed else ""))
        labels, label_source = find_binary_labels(args.labels)
    else:
        probs, softmaxed = as_probabilities(scores)
        if softmaxed:
            _log(f"note: '{output_blob}' is not a probability distribution (values outside "
                 f"[0, 1] or rows not summing to 1): showing softmax({output_blob})")
        labels, label_source = find_labels(args.labels, probs.shape[1])
    classes = "one binary probability" if scores.shape[1] == 1 else f"{probs.shape[1]} classes"
    _log(f"output '{output_blob}': {classes}; labels: {label_source}")
    for (name, path), arr in zip(saves, saved, strict=True):
        save_npy(path, arr)
        _log(f"saved '{name}' {arr.shape} to {path}")
    results = [{"image": path, "top": top_k(row, args.top_k, labels)}
               for path, row in zip(args.images, probs, strict=True)]
    print_results(results, prep.describe(), args.json)
    return 0


def _open_net(args, save_names):
    """The net (activation memory reused, except for the blobs we read), its
    input and output blob names."""
    from netdef.net import Net

    keep = [n for n in [args.output_blob, *save_names] if n]
    net = Net(args.net, weights=args.weights, phase="TEST", optimize=True, keep=keep, log=_log,
              strict=args.strict)
    if net.load_report is not None:
        report = net.load_report.lines()
        for line in report if args.verbose else report[-1:]:
            _log(line.strip())
    if net.random_weights:
        _log("WARNING: no --weights given: " + describe_initial_weights(net))
    input_blob = _pick(args.input_blob, net.inputs, "input", net)
    output_blob = args.output_blob or (net.outputs[-1] if net.outputs else None)
    for name in [output_blob, *save_names]:
        _pick(name, list(net.blobs), "blob", net)
    return net, input_blob, output_blob


def _preprocessor(args, shape, input_blob):
    from netdef.images import Preprocessor, parse_mean

    if len(shape) != 4:
        raise InputError(f"input '{input_blob}' has shape {shape}; images need N x C x H x W")
    mean, mean_source = (None, None) if args.mean is None else parse_mean(args.mean, shape[1])
    return Preprocessor(shape[1:], resize=_resize_size(args, shape) if args.crop else None,
                        channel_swap=args.channel_swap or "auto", raw_scale=args.raw_scale,
                        mean=mean, mean_source=mean_source, input_scale=args.input_scale)


def _pick(name, choices, what: str, net):
    if not choices:
        raise InputError(f"net '{net.name}' has no {what}s", hint="run needs a deploy prototxt "
                         "with an Input layer" if what == "input" else None)
    if name is None:
        return choices[0]
    if name not in choices:
        raise InputError(f"net '{net.name}' has no {what} '{name}'",
                         hint=did_you_mean(name, choices) or f"{what}s: {', '.join(choices)}")
    return name


def _resize_size(args, shape) -> tuple[int, int]:
    if args.resize:
        return args.resize
    # Keep the 256/224 margin for nets whose input is larger than 256.
    return tuple(RESIZE_FOR_CROP if d <= RESIZE_FOR_CROP else math.ceil(d * 256 / 224)
                 for d in shape[2:])


def _save_spec(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise InputError(f"--save-blob expects NAME=FILE.npy, got {text!r}")
    return name, path


def _forward_all(net, prep, args, input_blob, output_blob, saves):
    """Run every image through the net; returns (scores (N, K), [saved arrays])."""
    from netdef.images import ALPHA_DROPPED, load_image
    from netdef.kernels import compile_notice
    from netdef.progress import progress_bar

    enabled = True if args.progress else None
    scores, saved = [], [[] for _ in saves]
    with_alpha: list[str] = []
    bar = None       # opened after the first batch, which may show the compile counter
    try:
        for start in range(0, len(args.images), args.batch):
            paths = args.images[start:start + args.batch]
            images = []
            for p in paths:
                notes: list[str] = []
                images.append(prep(load_image(p, color=prep.color, notes=notes)))
                if ALPHA_DROPPED in notes:
                    with_alpha.append(p)
            batch = np.stack(images)
            if start == 0:       # the first pass compiles the kernels on a new machine
                with compile_notice(_log, enabled=enabled):
                    out = net.forward(**{input_blob: batch})
            else:
                out = net.forward(**{input_blob: batch})
            result = out[output_blob] if output_blob in out else net.blobs[output_blob].data
            scores.append(np.array(result, dtype=np.float32).reshape(len(paths), -1))
            for store, (name, _) in zip(saved, saves, strict=True):
                store.append(np.array(net.blobs[name].data))
            if bar is None:
                bar = progress_bar(total=len(args.images), desc="run", unit="img",
                                   enabled=enabled, leave=True)
            bar.update(len(paths))
    finally:
        if bar is not None:
            bar.close()
    if with_alpha:
        shown = ", ".join(with_alpha[:3]) + (f" and {len(with_alpha) - 3} more"
                                             if len(with_alpha) > 3 else "")
        _log(f"note: {len(with_alpha)} image(s) have transparent pixels ({shown}): the alpha "
             "channel is dropped, not composited onto a background (as pycaffe does), so "
             "transparent pixels count with whatever color they store")
    return np.concatenate(scores), [np.concatenate(s) for s in saved]


# ------------------------------------------------------------- helpers ----

def as_probabilities(scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(probs, softmaxed)``: the rows unchanged when they already are
    probability distributions, else their softmax."""
    scores = np.asarray(scores, dtype=np.float64)
    in_range = scores.size and scores.min() >= -1e-6 and scores.max() <= 1 + 1e-6
    if in_range and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores, False
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True), True


def binary_probabilities(scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(probs, squashed)`` for a one-unit output: columns (1 - p, p).

    A value in [0, 1] (a Sigmoid top) is p itself; anything else is taken as
    a logit and squashed with the sigmoid. Softmax over one value would
    always give 1.
    """
    p = np.asarray(scores, dtype=np.float64).reshape(-1)
    finite = p[np.isfinite(p)]
    squashed = bool(finite.size) and (finite.min() < -1e-6 or finite.max() > 1 + 1e-6)
    if squashed:
        p = 0.5 * (1.0 + np.tanh(0.5 * p))     # a sigmoid that does not overflow
    return np.stack([1.0 - p, p], axis=1), squashed


def find_binary_labels(explicit) -> tuple[list[str], str]:
    """Labels of a one-unit output: a file of 2 lines (class 0, class 1) or of 1 line
    (the positive class); by default "0 (1 - p)" and "1 (p)"."""
    if not explicit:
        return ["0 (1 - p)", "1 (p)"], "none (class 1 is p, class 0 is 1 - p)"
    labels = load_labels(explicit)
    if len(labels) == 1:
        return [f"not {labels[0]}", labels[0]], explicit
    if len(labels) != 2:
        raise InputError(f"the labels file has {len(labels)} lines but the output is one "
                         "binary probability", where=explicit,
                         hint="give 2 lines (class 0, class 1) or 1 (the positive class)")
    return labels, explicit


def describe_initial_weights(net) -> str:
    """What the weights of a net loaded without a weight file really are.

    Layers get their values from the prototxt's fillers; a layer without a
    ``weight_filler`` gets Caffe's default, the constant 0. The text says
    whether the weights are random or constant, and that the result means
    nothing either way.
    """
    random, constant, zero = [], [], True
    for name, blobs in net.params.items():
        arrays = [b.data for b in blobs if b.count]
        if not arrays:
            continue
        if any(float(a.min()) != float(a.max()) for a in arrays):
            random.append(name)
        else:
            constant.append(name)
            zero = zero and all(not a.any() for a in arrays)
    if not random and not constant:
        return "the net has no weights, yet its output is not from a trained model"
    if not random:
        value = "ZERO (the prototxt has no fillers" if zero else \
            "CONSTANT (the prototxt has no random fillers"
        return (f"every weight is {value}, and Caffe's default filler is the constant 0), "
                "so every image gets the same scores and the result below MEANS NOTHING")
    text = (f"weights are RANDOM (the prototxt's fillers, seed 0) in {len(random)} layer(s), "
            "so the predictions below are MEANINGLESS")
    if constant:
        names = ", ".join(constant[:3]) + (", ..." if len(constant) > 3 else "")
        text += f"; {len(constant)} layer(s) are constant (no filler: {names})"
    return text


def top_k(row: np.ndarray, k: int, labels: list[str] | None) -> list[dict]:
    """The k best classes of one row, highest first (ties: lower index first)."""
    order = np.argsort(-row, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i] if labels else None, "prob": float(row[i])}
            for i in order]


def load_labels(path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the labels file: {getattr(e, 'strerror', None) or e}",
                         where=os.fspath(path)) from None
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def find_labels(explicit, num_classes: int) -> tuple[list[str] | None, str]:
    """Labels for ``num_classes`` outputs and where they came from.

    An explicit file that does not fit is an error; the defaults are skipped
    silently when their line count differs.
    """
    if explicit:
        labels = load_labels(explicit)
        if len(labels) != num_classes:
            raise InputError(f"the labels file has {len(labels)} lines but the output has "
                             f"{num_classes} classes", where=explicit)
        return labels, explicit
    candidates = [os.environ.get("NETDEF_LABELS")]
    if num_classes == 1000:
        candidates.append(SYNSET_WORDS)
    for path in filter(None, candidates):
        if os.path.isfile(path):
            labels = load_labels(path)
            if len(labels) == num_classes:
                return labels, os.fspath(path)
    return None, "none (printing class indices)"


def print_results(results: list[dict], preprocessing: dict, as_json: bool) -> None:
    if as_json:
        for r in results:
            r["preprocessing"] = preprocessing
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(f"image: {r['image']}")
        for t in r["top"]:
            print(f"  {t['prob']:.4f}  {t['label'] if t['label'] is not None else t['index']}")


def save_npy(path, arr: np.ndarray) -> None:
    """np.save without pickles, replacing ``path`` atomically."""
    from netdef.io.atomic import atomic_open

    with atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def set_threads(n: int) -> None:
    """Use ``n`` threads in Numba kernels and in BLAS."""
    import numba
    from threadpoolctl import threadpool_limits

    if n < 1 or n > numba.config.NUMBA_NUM_THREADS:
        raise InputError(f"--threads {n}: choose 1 to {numba.config.NUMBA_NUM_THREADS}",
                         hint="NUMBA_NUM_THREADS caps it; set that variable to go higher")
    numba.set_num_threads(n)
    threadpool_limits(n)         # applies now, for the rest of the process
