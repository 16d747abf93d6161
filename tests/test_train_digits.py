"""Convergence: the zoo LeNet learns scikit-learn's digits through a real
LMDB data layer built with netdef's convert-imageset, from the README's own
solver file, and the result classifies the shipped sample images.

This is the README quick start run as a test (in a temporary folder that
links to zoo_defs, so nothing is written into the checkout)."""
from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import pytest

import netdef

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOLVER = "zoo_defs/digits/lenet_digits_solver.prototxt"

pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")
sys.path.insert(0, str(ROOT / "tools"))
import make_digits  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("digits")
    (work / "zoo_defs").symlink_to(ROOT / "zoo_defs", target_is_directory=True)
    old = os.getcwd()
    os.chdir(work)
    try:
        make_digits.build(pathlib.Path("out/digits"))
        scores = []
        solver = netdef.get_solver(SOLVER, log=lambda line: None)
        solver.add_callback(lambda e: scores.append(e) if e.get("event") == "test" else None)
        solver.solve()
        yield work, solver, scores
    finally:
        os.chdir(old)


def test_lenet_learns_the_digits(trained):
    work, solver, scores = trained
    assert solver.iter == 600
    final = scores[-1]
    accuracy = final["scores"]["accuracy"]
    assert accuracy >= 0.97, scores
    assert (work / "out/digits/lenet_digits_iter_600.caffemodel").exists()


def test_trained_weights_classify_the_samples(trained):
    work, _, _ = trained
    net = netdef.Net(str(ROOT / "zoo_defs/lenet.prototxt"),
                     weights=str(work / "out/digits/lenet_digits_iter_600.caffemodel"))
    from PIL import Image

    samples = sorted((ROOT / "zoo_defs/digits/samples").glob("digit_*.png"))
    assert len(samples) == 10
    for path in samples:
        pixels = np.asarray(Image.open(path).convert("L"), np.float32) * 0.00390625
        prob = net.forward(data=pixels[None, None])["prob"][0]
        assert int(prob.argmax()) == int(path.stem.split("_")[1]), path.name


def test_fine_tune_keeps_frozen_layers_bit_identical(trained):
    """Transfer learning: load the trained LeNet by layer name, freeze the
    convolutions with lr_mult 0 and learn a new classifier (renamed, so it
    starts from its filler)."""
    work, _, _ = trained
    text = (ROOT / "zoo_defs/digits/lenet_digits_train_test.prototxt").read_text()
    for conv in ("conv1", "conv2"):
        head = f'name: "{conv}"\n  type: "Convolution"'
        assert head in text
        start = text.index(head)
        first, second = text.index("lr_mult: 1", start), text.index("lr_mult: 2", start)
        text = text[:first] + "lr_mult: 0" + text[first + 10:second] + "lr_mult: 0" + \
            text[second + 10:]
    text = text.replace('name: "ip2"', 'name: "ip2_new"')
    net_file = work / "finetune_train_test.prototxt"
    net_file.write_text(text)
    solver_text = (f'net: "{net_file}"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\n'
                   'max_iter: 40\nrandom_seed: 3\ntest_iter: 4\ntest_interval: 40\n'
                   'test_initialization: false\nsnapshot_after_train: false\n')
    old = os.getcwd()
    os.chdir(work)
    try:
        solver = netdef.get_solver(solver_text, log=lambda line: None)
        report = solver.net.copy_from("out/digits/lenet_digits_iter_600.caffemodel")
        assert "ip2_new" not in report.arrays and "conv1" in report.arrays
        before = {name: [b.data.copy() for b in solver.net.params[name]]
                  for name in ("conv1", "conv2", "ip2_new")}
        scores = []
        solver.add_callback(lambda e: scores.append(e) if e.get("event") == "test" else None)
        solver.solve()
    finally:
        os.chdir(old)
    for name in ("conv1", "conv2"):
        for blob, saved in zip(solver.net.params[name], before[name]):
            np.testing.assert_array_equal(blob.data, saved, err_msg=name)
    assert not np.array_equal(solver.net.params["ip2_new"][0].data, before["ip2_new"][0])
    assert scores[-1]["scores"]["accuracy"] >= 0.9
