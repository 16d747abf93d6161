#!/usr/bin/env python3
"""Build the digits data set for the LeNet demo (zoo_defs/digits/).

    python tools/make_digits.py out/digits           # images, lists, two LMDBs
    python tools/make_digits.py out/digits --no-lmdb # images and list files only
    python tools/make_digits.py --samples zoo_defs/digits/samples   # the shipped samples

scikit-learn ships a small handwritten-digits set (1,797 images, 8x8, ink
0..16; the UCI "optical recognition of handwritten digits" test set). Each
image is scaled to 20x20 and centred on a 28x28 canvas, the way MNIST frames
its digits, so the MNIST LeNet runs on it unchanged. A seeded split keeps
360 images for testing. The LMDBs are built with netdef's own
convert-imageset, exactly as a user would build theirs:

    OUT/images/{train,test}/NNNN.png    OUT/train.txt  OUT/test.txt
    OUT/digits_train_lmdb               OUT/digits_test_lmdb

Needs scikit-learn (`pip install scikit-learn`; the `test` extra has it).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

TEST_COUNT = 360
SPLIT_SEED = 20261203


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int (N,)) from scikit-learn's digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = np.zeros((len(digits.images), 28, 28), np.uint8)
    for i, img in enumerate(digits.images):
        ink = Image.fromarray(np.round(img * (255.0 / 16.0)).astype(np.uint8))
        out[i, 4:24, 4:24] = np.asarray(ink.resize((20, 20), Image.BICUBIC))
    return out, digits.target.astype(int)


def split(count: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    return order[TEST_COUNT:], order[:TEST_COUNT]


def write_images(out: pathlib.Path) -> dict[str, pathlib.Path]:
    """Write the PNGs and the `path label` list files; returns the lists."""
    from PIL import Image

    images, labels = digit_images()
    lists = {}
    for part, index in zip(("train", "test"), split(len(images))):
        folder = out / "images" / part
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in index:
            name = f"{part}/{i:04d}.png"
            Image.fromarray(images[i]).save(out / "images" / name)
            lines.append(f"{name} {labels[i]}\n")
        lists[part] = out / f"{part}.txt"
        lists[part].write_text("".join(lines))
    return lists


def write_samples(folder: pathlib.Path) -> list[pathlib.Path]:
    """One held-out test image per class, as digit_<label>.png (the samples
    shipped in zoo_defs/digits/samples, which the demo net never saw): the
    test image nearest to its class's mean training image, a typical digit
    chosen without looking at any model."""
    from PIL import Image

    images, labels = digit_images()
    train, test = split(len(images))
    pixels = images.reshape(len(images), -1).astype(np.float64)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for label in range(10):
        mean = pixels[[i for i in train if labels[i] == label]].mean(axis=0)
        candidates = [i for i in test if labels[i] == label]
        i = min(candidates, key=lambda k: float(((pixels[k] - mean) ** 2).sum()))
        path = folder / f"digit_{label}.png"
        Image.fromarray(images[i]).save(path)
        written.append(path)
    return written


def build(out: pathlib.Path, lmdb: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lists = write_images(out)
    if not lmdb:
        return
    from netdef.data.imageset import convert_imageset

    for part, list_file in lists.items():
        convert_imageset(list_file, f"{out / 'images'}/", out / f"digits_{part}_lmdb",
                         gray=True, shuffle=part == "train", seed=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=pathlib.Path, nargs="?", help="output folder")
    parser.add_argument("--no-lmdb", action="store_true", help="images and list files only")
    parser.add_argument("--samples", type=pathlib.Path, metavar="FOLDER",
                        help="write one held-out test image per class into FOLDER")
    args = parser.parse_args(argv)
    if args.out is None and args.samples is None:
        parser.error("give an output folder, or --samples FOLDER")
    try:
        if args.samples is not None:
            write_samples(args.samples)
        if args.out is not None:
            build(args.out, lmdb=not args.no_lmdb)
    except ImportError as err:
        print(f"make_digits: {err}; install scikit-learn", file=sys.stderr)
        return 2
    print(f"wrote {args.out or args.samples}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
