"""``netdef detect``: run an SSD detector on images, print or draw the boxes.

    netdef detect zoo_defs/face_detector_ssd_res10_300x300.prototxt photo.jpg \\
        --weights res10_300x300_ssd_iter_140000.caffemodel --draw faces.png

The net's last output must come from a DetectionOutput layer (the SSD fork's
rows [image, label, score, xmin, ymin, xmax, ymax], in [0, 1]). Each image
is resized to the net input (bilinear), turned to BGR in 0..255, and given
the mean and scale of its detector: the OpenCV face detector subtracts
(104, 177, 123); MobileNet-SSD subtracts 127.5 and multiplies by 0.007843.
The preset is picked by the net's name, else by its number of classes (2:
the face detector, 21: MobileNet-SSD); ``--mean`` and ``--input-scale``
override it. Every detection whose score is above ``--threshold`` is
printed as one line, its box in pixels of the original image (clamped to
the image); ``--json`` prints a list instead, ``--draw OUT.png`` writes the
image with the boxes and labels drawn on it. Notes and warnings go to
stderr, as for ``netdef run``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from dataclasses import dataclass

import numpy as np

from netdef.errors import InputError

VOC_LABELS = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
              "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
              "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
FACE_LABELS = ["background", "face"]


@dataclass(frozen=True)
class Preset:
    what: str
    mean: str               # --mean syntax: one value or B,G,R
    input_scale: float | None
    labels: list[str]


FACE = Preset("OpenCV's face detector", "104,177,123", None, FACE_LABELS)
MOBILENET_SSD = Preset("MobileNet-SSD (VOC)", "127.5", 0.007843, VOC_LABELS)
PRESETS_BY_NAME = {"ResNet10-SSD-300x300-face": FACE, "MobileNet-SSD": MOBILENET_SSD}
PRESETS_BY_CLASSES = {2: FACE, 21: MOBILENET_SSD}

# One colour per class (RGB), cycled.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _log(msg: str) -> None:
    print(f"netdef detect: {msg}", file=sys.stderr)


def setup_detect(p: argparse.ArgumentParser) -> None:
    """Options of ``netdef detect`` (cli.COMMANDS calls this with the subparser)."""
    p.add_argument("net", help="deploy prototxt of an SSD detector (ends in DetectionOutput)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any Pillow format)")
    p.add_argument("--weights", metavar="FILE", help=".caffemodel; without it the weights are "
                   "the prototxt's fillers and the detections MEAN NOTHING")
    p.add_argument("--labels", metavar="FILE", help="one label per class, background first "
                   "(default: face or the VOC classes, by the detector)")
    p.add_argument("--threshold", type=float, default=0.5, metavar="T",
                   help="show detections scoring above T (default: 0.5)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.add_argument("--draw", metavar="OUT.png", help="write the image with its boxes drawn "
                   "(several images: OUT_1.png, OUT_2.png, ...)")
    p.add_argument("--mean", metavar="B,G,R", help="mean to subtract (default: the detector's)")
    p.add_argument("--input-scale", type=float, metavar="S",
                   help="multiply by S after the mean (default: the detector's)")
    p.add_argument("--threads", type=int, metavar="N", help="threads for kernels and BLAS")


def cmd_detect(args) -> int:
    from netdef.run import set_threads

    for path in args.images:
        if not os.path.exists(path):
            raise InputError("image file not found", where=path)
    if args.threads is not None:
        set_threads(args.threads)
    net, layer, output = _open_net(args)
    preset = _preset(net, layer)
    labels = _labels(args.labels, preset, layer.num_classes)
    prep = _preprocessor(args, net, preset)
    _log(f"preprocessing: {prep.summary()}")
    results = []
    for path in args.images:
        results.append(detect_image(net, prep, path, output, labels, args.threshold))
    if args.draw:
        for k, result in enumerate(results, 1):
            out = args.draw if len(results) == 1 else _numbered(args.draw, k)
            draw_detections(result["image"], result["detections"], out)
            _log(f"wrote {out}")
    print_detections(results, args.json)
    return 0


def _open_net(args):
    from netdef.net import Net
    from netdef.run import describe_initial_weights

    net = Net(args.net, weights=args.weights, phase="TEST", optimize=True, log=_log)
    if net.load_report is not None:
        _log(net.load_report.lines()[-1].strip())
    if net.random_weights:
        _log("WARNING: no --weights given: " + describe_initial_weights(net))
    output = net.outputs[-1] if net.outputs else None
    layer = next((x for x in net.layers if output in x.param.top), None)
    if layer is None or layer.type != "DetectionOutput":
        kind = f"'{output}' comes from a {layer.type} layer" if layer is not None else \
            "it has no output"
        raise InputError(f"net '{net.name}' is not an SSD detector: {kind}",
                         where=args.net, hint="detect needs a net whose last layer is "
                         "DetectionOutput; use `netdef run` for classifiers")
    if len(net.inputs) != 1 or len(net.input_shape()) != 4:
        raise InputError(f"net '{net.name}' needs one N x C x H x W image input, has inputs "
                         f"{net.inputs}", where=args.net)
    return net, layer, output


def _preset(net, layer) -> Preset | None:
    preset = PRESETS_BY_NAME.get(net.name)
    if preset is None:
        preset = PRESETS_BY_CLASSES.get(layer.num_classes)
        if preset is not None:
            _log(f"note: net '{net.name}' has {layer.num_classes} classes: preprocessing as "
                 f"{preset.what} (override with --mean / --input-scale)")
    return preset


def _labels(path, preset, num_classes) -> list[str]:
    from netdef.run import load_labels

    if path:
        labels = load_labels(path)
        if len(labels) != num_classes:
            raise InputError(f"the labels file has {len(labels)} lines but the detector has "
                             f"{num_classes} classes (background included)", where=path)
        return labels
    if preset is not None and len(preset.labels) == num_classes:
        return preset.labels
    return [str(i) for i in range(num_classes)]


def _preprocessor(args, net, preset):
    from netdef.images import Preprocessor, parse_mean

    shape = net.input_shape()
    mean_text = args.mean or (preset.mean if preset else None)
    mean, source = (None, None) if mean_text is None else parse_mean(mean_text, shape[1])
    scale = args.input_scale if args.input_scale is not None else \
        (preset.input_scale if preset else None)
    return Preprocessor(shape[1:], mean=mean, mean_source=source, input_scale=scale)


def detect_image(net, prep, path, output, labels, threshold) -> dict:
    """One image's detections above ``threshold``, boxes in its own pixels."""
    from netdef.images import load_image
    from netdef.kernels import compile_notice

    image = load_image(path, color=prep.color)
    height, width = image.shape[:2]
    start = time.perf_counter()
    with compile_notice(_log):
        rows = np.array(net.forward(**{net.inputs[0]: prep(image)[None]})[output])
    ms = (time.perf_counter() - start) * 1e3
    detections = []
    for _, label, score, *box in rows.reshape(-1, 7):
        if label < 0 or not score > threshold:
            continue
        x0, y0, x1, y1 = (float(np.clip(v * s, 0, s)) for v, s in
                          zip(box, (width, height, width, height), strict=True))
        k = int(label)
        detections.append({"label": labels[k] if 0 <= k < len(labels) else str(k),
                           "class": k, "score": float(score),
                           "box": [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)]})
    _log(f"{path}: {len(detections)} detection(s) above {threshold:g} ({ms:.0f} ms)")
    return {"image": os.fspath(path), "width": width, "height": height,
            "detections": detections}


def print_detections(results, as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        for d in r["detections"]:
            x0, y0, x1, y1 = d["box"]
            print(f"{r['image']}  {d['label']}  {d['score']:.4f}  "
                  f"{x0:.0f} {y0:.0f} {x1:.0f} {y1:.0f}")


def draw_detections(image_path, detections, out_path) -> None:
    """Write ``image_path`` with a box and a "label score" tag per detection."""
    from PIL import Image, ImageDraw, ImageFont

    from netdef.io.atomic import atomic_open

    with Image.open(image_path) as img:
        canvas = img.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line = max(2, min(canvas.size) // 200)
    for d in detections:
        color = PALETTE[d["class"] % len(PALETTE)]
        x0, y0, x1, y1 = d["box"]
        draw.rectangle([x0, y0, x1, y1], outline=color, width=line)
        text = f"{d['label']} {d['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y0 - th - 4 if y0 - th - 4 >= 0 else y0
        draw.rectangle([x0, ty, x0 + tw + 4, ty + th + 4], fill=color)
        draw.text((x0 + 2 - left, ty + 2 - top), text, fill=(0, 0, 0), font=font)
    suffix = pathlib.Path(out_path).suffix.lower().lstrip(".") or "png"
    fmt = {"jpg": "JPEG", "jpeg": "JPEG"}.get(suffix, suffix.upper())
    try:
        with atomic_open(out_path, "wb") as f:
            canvas.save(f, format=fmt)
    except (KeyError, ValueError) as e:
        raise InputError(f"cannot write this image format: {e}", where=out_path) from None


def _numbered(path: str, k: int) -> str:
    p = pathlib.Path(path)
    return str(p.with_name(f"{p.stem}_{k}{p.suffix}"))
