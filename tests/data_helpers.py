"""Small data sets for the data tests: LMDBs written record by record,
image folders, list files and HDF5 files, all in tmp_path."""
from __future__ import annotations

import numpy as np

from netdef.data.records import datum_from_array, datum_from_encoded, encode_image


def write_lmdb(path, records) -> str:
    """An LMDB holding ``records``: (key, value bytes) pairs."""
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key.encode() if isinstance(key, str) else key, value)
    env.close()
    return str(path)


def random_items(n, shape, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def raw_lmdb(path, items, labels=None) -> str:
    labels = range(len(items)) if labels is None else labels
    return write_lmdb(path, [(f"{i:08d}", datum_from_array(a, lab).SerializeToString())
                             for i, (a, lab) in enumerate(zip(items, labels))])


def encoded_lmdb(path, items, fmt="png") -> str:
    return write_lmdb(path, [(f"{i:08d}", datum_from_encoded(encode_image(a, fmt), i)
                              .SerializeToString()) for i, a in enumerate(items)])


def save_image(path, chw_bgr) -> None:
    """Write a C x H x W (BGR or gray) uint8 array as an image file."""
    from PIL import Image

    arr = np.asarray(chw_bgr)
    img = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else \
        Image.fromarray(np.ascontiguousarray(arr[::-1].transpose(1, 2, 0)), "RGB")
    img.save(path)


def image_folder(root, classes=("cat", "dog"), per_class=3, size=(6, 5), seed=0):
    """root/<class>/<i>.png images; returns {relative path: (array, label)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (3, *size), dtype=np.uint8)
            save_image(root / name / f"{i}.png", arr)
            out[f"{name}/{i}.png"] = (arr, label)
    return out


def layer_text(type_, params, tops=("data", "label"), name="data"):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {top_text} {params} }}'


def forward_batches(layer, count):
    """``count`` forwards of a set-up source layer; copies of the tops each time."""
    from layer_harness import wired

    _, tops = wired(layer)
    out = []
    for _ in range(count):
        layer.forward([], tops)
        out.append([t.data.copy() for t in tops])
    return out
