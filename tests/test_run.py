"""``netdef run``: a tiny net with random or saved weights on tiny images."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from netdef import cli, run
from netdef.errors import InputError

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def files(tmp_path):
    """The tiny net, its saved weights and three small images of different sizes."""
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY)
    from netdef.net import Net

    weights = tmp_path / "tiny.caffemodel"
    Net(str(net), seed=3).save(str(weights))
    rng = np.random.default_rng(0)
    images = []
    for i, (shape, mode) in enumerate([((10, 12, 3), "RGB"), ((9, 9), "L"), ((8, 8, 4), "RGBA")]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode).save(path)
        images.append(str(path))
    return {"net": str(net), "weights": str(weights), "images": images, "dir": tmp_path}


@pytest.fixture
def netdef(monkeypatch, capsys):
    """Run the real CLI with ``run`` registered; returns (code, stdout, stderr)."""

    def call(*argv):
        code = cli.main(["run", *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_text_output_and_random_weight_warning(files, netdef):
    code, out, err = netdef(files["net"], *files["images"], "--top-k", "3")
    assert code == 0
    lines = out.splitlines()
    assert [ln for ln in lines if ln.startswith("image: ")] == \
        [f"image: {p}" for p in files["images"]]
    rows = [ln for ln in lines if not ln.startswith("image: ")]
    assert len(rows) == 9 and all(re.fullmatch(r"  [01]\.\d{4}  \d", r) for r in rows)
    assert "RANDOM" in err and "MEANINGLESS" in err
    assert "preprocessing:" in err and "RGB->BGR" in err


def test_json_schema_and_saved_weights(files, netdef):
    code, out, err = netdef(files["net"], *files["images"], "--weights", files["weights"],
                            "--json", "--mean", "100,110,120")
    assert code == 0 and "RANDOM" not in err
    result = json.loads(out)
    assert [r["image"] for r in result] == files["images"]
    for r in result:
        assert set(r) == {"image", "top", "preprocessing"}
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert abs(sum(probs) - 1) < 1e-4
        assert sorted(t["index"] for t in r["top"]) == list(range(5))
        assert all(t["label"] is None for t in r["top"])
        pre = r["preprocessing"]
        assert pre["channel_order"] == "BGR" and pre["raw_scale"] == 255
        assert pre["mean"]["values"] == [100, 110, 120] and pre["input_shape"] == [3, 8, 8]


def test_results_match_the_net_directly_and_do_not_depend_on_batch(files, netdef):
    outs = []
    for batch in ("1", "2", "3"):
        code, out, _ = netdef(files["net"], *files["images"], "--weights", files["weights"],
                              "--json", "--batch", batch, "--crop", "--resize", "10,11")
        assert code == 0
        outs.append(json.loads(out))
    probs = [[[t["prob"] for t in r["top"]] for r in o] for o in outs]
    np.testing.assert_allclose(probs[0], probs[1], rtol=1e-5)
    np.testing.assert_allclose(probs[0], probs[2], rtol=1e-5)
    # The same numbers through the Python API.
    from netdef.images import Preprocessor, load_image
    from netdef.net import Net

    net = Net(files["net"], weights=files["weights"])
    prep = Preprocessor((3, 8, 8), resize=(10, 11))
    x = prep.batch([load_image(p) for p in files["images"]])
    direct = net.forward(data=x)["prob"]
    for r, row in zip(outs[0], direct, strict=True):
        assert [t["index"] for t in r["top"]] == list(np.argsort(-row, kind="stable"))
        np.testing.assert_allclose([t["prob"] for t in r["top"]], np.sort(row)[::-1], rtol=1e-5)


def test_labels_explicit_env_and_mismatch(files, netdef, monkeypatch):
    labels = files["dir"] / "labels.txt"
    labels.write_text("".join(f"c{i} class {i}\n" for i in range(5)))
    code, out, _ = netdef(files["net"], files["images"][0], "--labels", labels, "--top-k", "1")
    assert code == 0 and re.search(r"  \d\.\d{4}  c\d class \d", out)
    monkeypatch.setenv("NETDEF_LABELS", str(labels))
    code, out, err = netdef(files["net"], files["images"][0], "--json")
    assert code == 0 and json.loads(out)[0]["top"][0]["label"].startswith("c")
    assert str(labels) in err
    short = files["dir"] / "short.txt"
    short.write_text("a\nb\n")
    code, out, err = netdef(files["net"], files["images"][0], "--labels", short)
    assert code == 2 and "short.txt" in err and "2 lines" in err


def test_default_labels_are_the_imagenet_synsets():
    labels, source = run.find_labels(None, 1000)
    assert source.endswith("synset_words.txt") and len(labels) == 1000
    assert labels[0] == "n01440764 tench, Tinca tinca"
    assert labels[281] == "n02123045 tabby, tabby cat"
    wnids = [ln.split()[0] for ln in labels]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert run.find_labels(None, 10) == (None, "none (printing class indices)")


def test_save_blob_writes_plain_npy_for_all_images(files, netdef):
    pool = files["dir"] / "pool.npy"
    prob = files["dir"] / "prob.npy"
    code, _, err = netdef(files["net"], *files["images"], "--batch", "2",
                          "--save-blob", f"pool1={pool}", "--save-blob", f"prob={prob}")
    assert code == 0
    arr = np.load(pool, allow_pickle=False)
    assert arr.shape == (3, 4, 3, 3) and arr.dtype == np.float32
    np.testing.assert_allclose(np.load(prob, allow_pickle=False).sum(axis=1), 1, rtol=1e-5)
    assert not list(files["dir"].glob(".*.tmp"))
    code, _, err = netdef(files["net"], files["images"][0], "--save-blob", "poo1=x.npy")
    assert code == 2 and "poo1" in err and "pool1" in err


def test_output_blob_that_is_not_a_probability_is_softmaxed(files, netdef):
    code, out, err = netdef(files["net"], files["images"][0], "--output-blob", "fc", "--json")
    assert code == 0 and "softmax(fc)" in err
    assert abs(sum(t["prob"] for t in json.loads(out)[0]["top"]) - 1) < 1e-5


@pytest.mark.parametrize("make,expect", [
    (lambda d: d / "missing.png", "image file not found"),
    (lambda d: (d / "bad.jpg").write_bytes(b"junk") and d / "bad.jpg", "not an image file"),
])
def test_bad_image_is_a_one_line_error(files, netdef, make, expect):
    path = make(files["dir"])
    code, out, err = netdef(files["net"], files["images"][0], path)
    assert code == 2 and out == ""
    error_lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(error_lines) == 1
    assert error_lines[0].startswith(f"netdef: error: {path}: {expect}")
    assert "Traceback" not in err


@pytest.mark.parametrize("mean,expect", [("1,2", "2 values"), ("nope.npy", "nope.npy")])
def test_bad_mean_is_a_one_line_error(files, netdef, mean, expect):
    code, _, err = netdef(files["net"], files["images"][0], "--mean", mean)
    assert code == 2 and expect in err and "Traceback" not in err


def test_progress_bar_only_on_request(files, netdef):
    _, _, err = netdef(files["net"], *files["images"])
    assert "3/3" not in err                 # captured stderr is not a terminal
    _, _, err = netdef(files["net"], *files["images"], "--progress")
    assert "run: 100%" in err and "3/3" in err and "img/s" in err   # tqdm: count and rate


def test_threads(files, netdef):
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    before = {i["internal_api"]: i["num_threads"] for i in threadpool_info()}
    code, _, err = netdef(files["net"], files["images"][0], "--threads", "1")
    assert code == 0 and numba.get_num_threads() == 1
    assert {i["num_threads"] for i in threadpool_info()} == {1}     # BLAS too
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    threadpool_limits(before.get("openblas"), user_api="blas")
    code, _, err = netdef(files["net"], files["images"][0], "--threads", "100000")
    assert code == 2 and "--threads" in err


def test_as_probabilities_and_top_k():
    probs = np.array([[0.1, 0.7, 0.2]])
    same, softmaxed = run.as_probabilities(probs)
    assert not softmaxed and np.array_equal(same, probs)
    logits, softmaxed = run.as_probabilities(np.array([[1.0, 3.0, 2.0]]))
    assert softmaxed
    np.testing.assert_allclose(logits.sum(), 1)
    assert [t["index"] for t in run.top_k(np.array([0.2, 0.5, 0.2, 0.1]), 3, None)] == [1, 0, 2]
    assert run.top_k(np.array([0.4, 0.6]), 1, ["a", "b"])[0]["label"] == "b"


def test_add_run_parser_registers_a_subcommand():
    import argparse

    parser = argparse.ArgumentParser()
    run.add_run_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", "n.prototxt", "a.jpg", "--channel-swap", "0,1,2"])
    assert args.handler is run.cmd_run and args.channel_swap == (0, 1, 2)
    with pytest.raises(InputError, match="NAME=FILE.npy"):
        run._save_spec("nofile")


def test_shared_images_through_caffenet(shared_models, netdef):
    # One image keeps this quick; test_images checks all three through the preprocessing.
    code, out, err = netdef(shared_models / "bvlc_reference_caffenet" / "deploy.prototxt",
                            shared_models / "images" / "cat_gray.jpg", "--crop", "--top-k", "6",
                            "--mean",
                            shared_models / "imagenet_mean" / "ilsvrc_2012_mean.npy")
    assert code == 0, err
    assert "mean image 256x256 center-cropped to 227x227" in err
    assert "synset_words.txt" in err
    rows = [ln for ln in out.splitlines() if not ln.startswith("image: ")]
    assert len(rows) == 6 and all(re.fullmatch(r"  \d\.\d{4}  n\d{8} .+", r) for r in rows)
    assert out.startswith("image: ") and out.endswith("cat_gray.jpg\n" + "\n".join(rows) + "\n")


def test_weight_loading_is_reported(files, netdef):
    code, _, err = netdef(files["net"], files["images"][0], "--weights", files["weights"])
    assert code == 0 and "kept at init" in err and "RANDOM" not in err
    code, _, err = netdef(files["net"], files["images"][0], "--weights", files["weights"],
                          "--verbose")
    assert code == 0 and "loaded (" in err


BINARY = """
name: "binary"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "prob" type: "Sigmoid" bottom: "fc" top: "prob" }
"""

NO_FILLERS = """
name: "nofill"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_one_sigmoid_output_is_a_binary_probability(files, netdef):
    net = files["dir"] / "binary.prototxt"
    net.write_text(BINARY)
    code, out, err = netdef(net, files["images"][0], "--json")
    assert code == 0, err
    top = json.loads(out)[0]["top"]
    assert [t["index"] for t in sorted(top, key=lambda t: t["index"])] == [0, 1]
    p = {t["index"]: t["prob"] for t in top}
    assert abs(p[0] + p[1] - 1) < 1e-9 and 0.0 < p[1] < 1.0 and p[1] != 1.0
    assert "binary probability p of class 1" in err and "one binary probability" in err
    labels = files["dir"] / "labels.txt"
    labels.write_text("smiling\n")
    code, out, _ = netdef(net, files["images"][0], "--labels", labels)
    assert code == 0 and "  smiling" in out and "  not smiling" in out


def test_binary_probabilities_squash_logits():
    probs, squashed = run.binary_probabilities(np.array([[0.25], [0.75]]))
    assert not squashed and np.allclose(probs, [[0.75, 0.25], [0.25, 0.75]])
    probs, squashed = run.binary_probabilities(np.array([[0.0], [1000.0], [-1000.0]]))
    assert squashed and np.allclose(probs[:, 1], [0.5, 1.0, 0.0])


def test_net_without_fillers_says_weights_are_zero(files, netdef):
    net = files["dir"] / "nofill.prototxt"
    net.write_text(NO_FILLERS)
    code, _, err = netdef(net, files["images"][0])
    assert code == 0
    assert "every weight is ZERO" in err and "MEANS NOTHING" in err and "RANDOM" not in err


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_nan_weights_are_reported_at_load_and_in_the_output(files, netdef):
    from netdef.net import Net

    bad = Net(files["net"], seed=3)
    bad.params["fc"][0].data[0, :3] = np.nan
    bad.params["conv1"][1].data[0] = np.inf
    path = files["dir"] / "nan.caffemodel"
    bad.save(str(path))
    code, out, err = netdef(files["net"], files["images"][0], "--weights", path)
    assert code == 0
    assert "layer 'conv1' blob 1 (4,): 1 of 4 values are infinite" in err
    assert "layer 'fc' blob 0 (5, 36): 3 of 180 values are NaN" in err
    assert "holds NaN or infinite values for 1 of 1 image(s)" in err


def test_transparent_images_get_a_note(files, netdef):
    code, _, err = netdef(files["net"], *files["images"])
    assert code == 0
    assert f"1 image(s) have transparent pixels ({files['images'][2]})" in err
    assert "alpha channel is dropped, not composited" in err
    opaque = files["dir"] / "opaque.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 255)).save(opaque)
    _, _, err = netdef(files["net"], opaque)
    assert "transparent" not in err                 # nothing is lost: nothing to say


def test_first_compile_is_announced(monkeypatch):
    import numba

    from netdef.kernels import compile_notice

    def relu(x):          # posing as a netdef kernel that is not compiled yet
        return x

    relu.__module__, relu.__qualname__ = "netdef.kernels.elementwise", "relu"
    fake = numba.njit(cache=False)(relu)
    lines = []
    with compile_notice(lines.append, enabled=False):
        fake(1.0)
    assert lines[0].startswith("compiling kernels for this machine (first run only")
    assert lines[1].startswith("compiled 1 kernel(s) in ")
    lines.clear()
    with compile_notice(lines.append, enabled=False):
        fake(2.0)                                    # already compiled: silent
    assert lines == []
