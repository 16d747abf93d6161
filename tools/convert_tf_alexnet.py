#!/usr/bin/env python3
"""Convert the TensorFlow AlexNet port's bvlc_alexnet.npy into a .caffemodel.

    python tools/convert_tf_alexnet.py bvlc_alexnet.npy deploy.prototxt out.caffemodel

The prototxt is read with netdef's parser (legacy V1/V0 nets are upgraded).
The .npy (a pickled {'conv1': [W, b], ...} dict) is read with netdef's
restricted unpickler, so it cannot run code. Weights are rearranged into
Caffe's layout (see netdef/io/convert.py); the prototxt supplies layer names
and pool5's channel count. Logs go to stderr.

Exit codes: 0 written, 1 I/O failure, 2 bad input (NetdefError) or usage.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

try:
    import netdef  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from netdef.frontend import source as frontend  # noqa: E402
from netdef.errors import NetdefError  # noqa: E402
from netdef.io.convert import convert_npy_to_caffemodel  # noqa: E402
from netdef.frontend.schema import pb  # noqa: E402


def read_net(path: str) -> pb.NetParameter:
    """The net definition, parsed and upgraded to the current format."""
    return frontend.read_net(path).param


def parse_chw(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. 256,6,6), got {text!r}") from None
    return c, h, w


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("npy", help="the TensorFlow port's weights, e.g. bvlc_alexnet.npy")
    p.add_argument("prototxt", help="the Caffe net definition (e.g. bvlc_alexnet/deploy.prototxt)")
    p.add_argument("output", help="the .caffemodel to write")
    p.add_argument("--fc-input", type=parse_chw, metavar="C,H,W",
                   help="shape feeding the first fc layer (default: derived from the net)")
    p.add_argument("--first-fc", metavar="NAME",
                   help="first inner product after the convolutions (default: from the net)")
    args = p.parse_args(argv)
    try:
        net = read_net(args.prototxt)
        weights = convert_npy_to_caffemodel(args.npy, net, args.output,
                                            fc_input_shape=args.fc_input,
                                            first_fc=args.first_fc)
    except NetdefError as e:
        print(f"convert_tf_alexnet: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"convert_tf_alexnet: {e}", file=sys.stderr)
        return 1
    for name, blobs in weights.items():
        shapes = ", ".join(str(b.shape) for b in blobs)
        print(f"  {name}: {shapes}", file=sys.stderr)
    print(f"wrote {args.output} ({len(weights)} layers)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
