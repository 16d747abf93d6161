#!/usr/bin/env python3
"""Build zoo_defs/synset_words.txt: the 1000 ImageNet-1k classes in Caffe's order.

    pip download --no-deps timm -d /tmp/timm
    python tools/make_synset_words.py /tmp/timm/timm-1.0.31-py3-none-any.whl
    python tools/make_synset_words.py SOURCE --check    # exit 1 if the file differs

SOURCE is a timm wheel, or a folder holding an unpacked/installed timm (the
folder that contains ``timm/``, or ``timm/`` itself). Each output line is
``<wnid> <lemmas>``, e.g. ``n01440764 tench, Tinca tinca``, sorted by wnid:
the class order of Caffe's ILSVRC 2012 models (``synset_words.txt`` of
Caffe's ``get_ilsvrc_aux.sh``), so line i is output index i.

Provenance and license: the data comes from the ``timm`` package
(pytorch-image-models, Ross Wightman; Apache License 2.0, as stated in its
wheel's METADATA and LICENSE), files ``timm/data/_info/imagenet_synsets.txt``
(the 1000 ImageNet-1k WordNet ids) and
``timm/data/_info/imagenet_synset_to_lemma.txt`` (WordNet id -> lemmas).
The checked-in file was built from timm 1.0.31. The lemmas themselves are
WordNet 3.0 synset words (Princeton University's WordNet license, which
permits use, copying and distribution with its notice). netdef does not
depend on timm: only this script reads it, once, to write the text file.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "zoo_defs" / "synset_words.txt"
SYNSETS = "timm/data/_info/imagenet_synsets.txt"
LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"


def read_sources(source: pathlib.Path) -> tuple[str, str]:
    """The text of the synset list and the lemma table from a wheel or folder."""
    if source.is_file():
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(SYNSETS).decode("utf-8"), wheel.read(LEMMAS).decode("utf-8")
    for base in (source, source.parent):
        if (base / SYNSETS).is_file():
            return (base / SYNSETS).read_text("utf-8"), (base / LEMMAS).read_text("utf-8")
    raise SystemExit(f"{source}: no {SYNSETS} found (give a timm wheel or its folder)")


def build(synsets_text: str, lemmas_text: str) -> str:
    wnids = synsets_text.split()
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise SystemExit(f"expected 1000 distinct wnids, found {len(wnids)}")
    lemmas = {}
    for line in lemmas_text.splitlines():
        if line.strip():
            wnid, words = line.split("\t", 1)
            lemmas[wnid] = words.strip()
    missing = [w for w in wnids if w not in lemmas]
    if missing:
        raise SystemExit(f"{len(missing)} wnids have no lemma, e.g. {missing[:3]}")
    # Caffe's class index is the position in wnid-sorted order.
    return "".join(f"{w} {lemmas[w]}\n" for w in sorted(wnids))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=pathlib.Path, help="timm wheel (.whl) or folder")
    ap.add_argument("-o", "--output", type=pathlib.Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    text = build(*read_sources(args.source))
    if args.check:
        same = args.output.is_file() and args.output.read_text("utf-8") == text
        print(f"{args.output}: {'up to date' if same else 'DIFFERS'}")
        return 0 if same else 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, "utf-8")
    print(f"wrote {args.output} ({text.count(chr(10))} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
