"""netdef's own zoo definitions (zoo_defs/*.prototxt).

Two independent checks of every file:

* a small shape/parameter counter in this file (``count``), written from the
  layer formulas alone, which needs nothing from netdef but the schema; and
* netdef's own ``netdef.summary.summarize`` (imported inside the tests that use
  it, so the first kind keeps working while summary.py is being written).

Both must agree with the published figures in ``EXPECTED``. Where a published
Caffe model of the same architecture exists in ../shared/models, the layers that
carry weights must match it name for name and shape for shape, so that published
.caffemodel files load into our definitions by layer name.
"""
from __future__ import annotations

import importlib.util
import math
import pathlib
import re
from dataclasses import dataclass, field

import pytest
from google.protobuf import text_format

from netdef.frontend.schema import pb

ROOT = pathlib.Path(__file__).resolve().parents[1]
ZOO = ROOT / "zoo_defs"


@dataclass(frozen=True)
class Expected:
    params: int            # learnable: conv/InnerProduct weights + biases, Scale gamma/beta
    macs: int              # per image: conv and InnerProduct multiply-accumulates only
    batch: int             # N of the TEST-phase input
    stored: int = 0        # non-learnable blobs kept in a .caffemodel (BatchNorm statistics)
    data: tuple | None = None   # shape a Data/ImageData layer yields in TEST (no DB needed)
    shapes: dict = field(default_factory=dict)  # blob -> shape, checked after inference


ALEXNET_SHAPES = {"conv1": (10, 96, 55, 55), "pool2": (10, 256, 13, 13),
                  "pool5": (10, 256, 6, 6), "fc6": (10, 4096), "prob": (10, 1000)}

EXPECTED = {
    "lenet.prototxt": Expected(
        431_080, 2_293_000, 1,
        shapes={"pool2": (1, 50, 4, 4), "ip1": (1, 500), "prob": (1, 10)}),
    "lenet_train_test.prototxt": Expected(
        431_080, 2_293_000, 100, data=(100, 1, 28, 28),
        shapes={"pool2": (100, 50, 4, 4), "ip2": (100, 10)}),
    "alexnet_deploy.prototxt": Expected(60_965_224, 724_406_816, 10, shapes=ALEXNET_SHAPES),
    "alexnet_train_val.prototxt": Expected(
        60_965_224, 724_406_816, 50, data=(50, 3, 227, 227),
        shapes={"pool5": (50, 256, 6, 6), "fc8": (50, 1000)}),
    "caffenet_deploy.prototxt": Expected(60_965_224, 724_406_816, 10, shapes=ALEXNET_SHAPES),
    "vgg16_deploy.prototxt": Expected(
        138_357_544, 15_470_264_320, 1,
        shapes={"conv1_2": (1, 64, 224, 224), "pool5": (1, 512, 7, 7), "prob": (1, 1000)}),
    "nin_imagenet_deploy.prototxt": Expected(
        7_595_176, 1_100_188_800, 1,
        shapes={"conv1": (1, 96, 54, 54), "pool0": (1, 96, 27, 27), "pool3": (1, 384, 6, 6),
                "cccp8": (1, 1000, 6, 6), "prob": (1, 1000, 1, 1)}),
    "googlenet_deploy.prototxt": Expected(
        6_998_552, 1_582_671_872, 1,
        shapes={"pool2/3x3_s2": (1, 192, 28, 28), "inception_3a/output": (1, 256, 28, 28),
                "inception_4e/output": (1, 832, 14, 14),
                "inception_5b/output": (1, 1024, 7, 7), "prob": (1, 1000)}),
    "resnet50_deploy.prototxt": Expected(
        25_557_096, 3_857_973_248, 1, stored=53_173,
        shapes={"pool1": (1, 64, 56, 56), "res2c": (1, 256, 56, 56),
                "res3d": (1, 512, 28, 28), "res4f": (1, 1024, 14, 14),
                "res5c": (1, 2048, 7, 7), "prob": (1, 1000)}),
    "squeezenet_v1_1_deploy.prototxt": Expected(
        1_235_496, 387_747_520, 1,
        shapes={"conv1": (1, 64, 113, 113), "fire2/concat": (1, 128, 56, 56),
                "fire9/concat": (1, 512, 14, 14), "prob": (1, 1000, 1, 1)}),
    "traffic_signs_lenet.prototxt": Expected(
        109_067, 399_588, 1, shapes={"pool2": (1, 16, 7, 7), "prob": (1, 43)}),
    "traffic_signs_lenet_train_val.prototxt": Expected(
        109_067, 399_588, 100, data=(100, 3, 32, 32), shapes={"fc5": (100, 43)}),
    "happy_face.prototxt": Expected(
        37_569, 19_300_352, 1, stored=65,
        shapes={"conv1": (1, 32, 64, 64), "pool1": (1, 32, 32, 32), "prob": (1, 1)}),
    "happy_face_train_val.prototxt": Expected(
        37_569, 19_300_352, 150, stored=65, data=(150, 3, 64, 64), shapes={"fc": (150, 1)}),
    "mobilenet_v1_deploy.prototxt": Expected(
        4_231_976, 568_740_352, 1, stored=21_915,
        shapes={"conv1": (1, 32, 112, 112), "conv2_2/dw": (1, 64, 56, 56),
                "conv4_2/sep": (1, 512, 14, 14), "conv6/sep": (1, 1024, 7, 7),
                "pool6": (1, 1024, 1, 1), "prob": (1, 1000, 1, 1)}),
    "mobilenet_v2_deploy.prototxt": Expected(
        3_505_960, 429_111_936, 1, stored=34_229,
        shapes={"conv1/bn": (1, 32, 112, 112), "block_3_1": (1, 24, 56, 56),
                "block_4_6": (1, 64, 28, 28), "block_5_2": (1, 96, 14, 14),
                "block_6_2": (1, 160, 7, 7), "conv6_4/bn": (1, 1280, 7, 7),
                "prob": (1, 1000, 1, 1)}),
    "face_detector_ssd_res10_300x300.prototxt": Expected(
        2_660_154, 1_178_874_752, 1, stored=2_512,
        shapes={"conv1_pool": (1, 32, 75, 75), "layer_256_1_bn1": (1, 128, 38, 38),
                "fc7": (1, 256, 19, 19), "conv9_2_h": (1, 128, 5, 5),
                "mbox_loc": (1, 35_568), "mbox_conf": (1, 17_784)}),
    "mobilenet_ssd_deploy.prototxt": Expected(
        5_783_417, 1_148_479_168, 1,
        shapes={"conv11": (1, 512, 19, 19), "conv13": (1, 1024, 10, 10),
                "conv17_2": (1, 128, 1, 1), "mbox_loc": (1, 7_668), "mbox_conf": (1, 40_257)}),
    "mnist_alexnet_small.prototxt": Expected(
        5_624_842, 34_606_080, 1,
        shapes={"pool2": (1, 128, 7, 7), "pool3": (1, 256, 4, 4), "prob": (1, 10)}),
}

# SSD detectors: their result is DetectionOutput's top, not a "prob".
DETECTORS = {"face_detector_ssd_res10_300x300.prototxt", "mobilenet_ssd_deploy.prototxt"}

# The published model each of ours reproduces, and the TEST data shape its
# data layer would yield (NIN is only published as a train/val net).
PUBLISHED = {
    "alexnet_deploy.prototxt": ("bvlc_alexnet/deploy.prototxt", None),
    "caffenet_deploy.prototxt": ("bvlc_reference_caffenet/deploy.prototxt", None),
    "googlenet_deploy.prototxt": ("bvlc_googlenet/deploy.prototxt", None),
    "resnet50_deploy.prototxt": ("resnet/ResNet-50-deploy.prototxt", None),
    "squeezenet_v1_1_deploy.prototxt": ("squeezenet/SqueezeNet_v1.1/deploy.prototxt", None),
    "vgg16_deploy.prototxt": ("vgg_ilsvrc_16/VGG_ILSVRC_16_layers_deploy.prototxt", None),
    "nin_imagenet_deploy.prototxt": ("nin_imagenet/train_val.prototxt", (89, 3, 224, 224)),
}


# ---------------------------------------------------- independent counter ----

V1_TYPES = {"CONVOLUTION": "Convolution", "INNER_PRODUCT": "InnerProduct",
            "POOLING": "Pooling", "CONCAT": "Concat", "ELTWISE": "Eltwise", "DATA": "Data",
            "SOFTMAX_LOSS": "SoftmaxWithLoss", "ACCURACY": "Accuracy"}
LOSSES = {"SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "Accuracy"}


@dataclass
class Counted:
    name: str
    type: str
    blobs: list            # shapes of every stored blob, learnable or not
    learnable: int
    macs: int


def parse(path: pathlib.Path) -> pb.NetParameter:
    return text_format.Parse(path.read_text(), pb.NetParameter())


def _first(values, default):
    return int(values[0]) if len(values) else default


def _kept(layer, phase) -> bool:
    if layer.include:
        return any(not r.HasField("phase") or r.phase == phase for r in layer.include)
    return not any(r.HasField("phase") and r.phase == phase for r in layer.exclude)


def count(net: pb.NetParameter, data_shape=None, phase=pb.TEST):
    """Shapes, parameter blobs and MACs of ``net``, from the layer formulas alone.

    Returns (layers, shapes): one Counted per kept layer, and blob -> shape.
    Caffe's rules: conv floors, pooling rounds up (the last window must start
    inside the padded image), InnerProduct flattens everything after axis 0.
    """
    shapes: dict[str, tuple] = {}
    if net.input:  # legacy deploy header
        dims = list(net.input_dim) or list(net.input_shape[0].dim)
        shapes[net.input[0]] = tuple(int(d) for d in dims[:4])
    out = []
    layers = net.layer or net.layers
    for layer in layers:
        if not _kept(layer, phase):
            continue
        kind = layer.type if isinstance(layer.type, str) else \
            V1_TYPES.get(pb.V1LayerParameter.LayerType.Name(layer.type), "Same")
        x = shapes.get(layer.bottom[0]) if layer.bottom else None
        blobs, learnable, macs, top = [], 0, 0, x
        if kind == "Input":
            top = tuple(int(d) for d in layer.input_param.shape[0].dim)
        elif kind in ("Data", "ImageData"):
            top = data_shape
            shapes[layer.top[1]] = (data_shape[0],)
        elif kind == "Convolution":
            p = layer.convolution_param
            k, s, pad = _first(p.kernel_size, 0), _first(p.stride, 1), _first(p.pad, 0)
            span = _first(p.dilation, 1) * (k - 1) + 1
            h, w = ((d + 2 * pad - span) // s + 1 for d in x[2:])
            top = (x[0], p.num_output, h, w)
            blobs = [(p.num_output, x[1] // p.group, k, k)] + ([(p.num_output,)] * p.bias_term)
            macs = math.prod(top) * (x[1] // p.group) * k * k
        elif kind == "InnerProduct":
            n_in = math.prod(x[1:])
            top = (x[0], layer.inner_product_param.num_output)
            blobs = [(top[1], n_in), (top[1],)]
            macs = x[0] * top[1] * n_in
        elif kind == "Pooling":
            p = layer.pooling_param
            if p.global_pooling:
                top = x[:2] + (1, 1)
            else:
                k, s, pad = p.kernel_size, p.stride, p.pad
                sizes = []
                for d in x[2:]:
                    o = -(-(d + 2 * pad - k) // s) + 1
                    if pad and (o - 1) * s >= d + pad:
                        o -= 1
                    sizes.append(o)
                top = x[:2] + tuple(sizes)
        elif kind == "Concat":
            top = (x[0], sum(shapes[b][1] for b in layer.bottom)) + x[2:]
        elif kind == "BatchNorm":
            blobs = [(x[1],), (x[1],), (1,)]
        elif kind == "Normalize":
            blobs = [(1,) if layer.norm_param.channel_shared else (x[1],)]
        elif kind == "Permute":
            top = tuple(x[o] for o in layer.permute_param.order)
        elif kind == "Flatten":   # axis 1 to the end, as the SSD heads use it
            top = (x[0], math.prod(x[1:]))
        elif kind == "Scale":
            blobs = [(x[1],)] * (2 if layer.scale_param.bias_term else 1)
        elif kind in LOSSES:
            top = ()
        if kind != "BatchNorm":
            learnable = sum(math.prod(b) for b in blobs)
        for t in layer.top:
            shapes[t] = top
        out.append(Counted(layer.name, kind, blobs, learnable, macs))
    return out, shapes


def zoo_files() -> list[str]:
    return sorted(p.name for p in ZOO.glob("*.prototxt"))


def counted(name: str):
    return count(parse(ZOO / name), EXPECTED[name].data)


# ------------------------------------------------------------ the files ----

def test_every_zoo_file_has_expected_figures():
    assert zoo_files() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parses_with_a_name_and_layers(name):
    net = parse(ZOO / name)
    assert net.name and len(net.layer) > 5
    assert not net.layers and not net.input  # current format only
    tops = [t for layer in net.layer for t in layer.top]
    assert "prob" in tops or "loss" in tops or "detection_out" in tops


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_outputs_are_prob_or_the_losses(name):
    """No dangling blobs: what nothing consumes is exactly the net's result."""
    net = parse(ZOO / name)
    if name in DETECTORS:   # TEST: the detections; TRAIN: what a MultiBoxLoss would take
        for phase, expected in ((pb.TEST, {"detection_out"}),
                                (pb.TRAIN, {"mbox_loc", "mbox_conf_flatten", "mbox_priorbox"})):
            kept = [layer for layer in net.layer if _kept(layer, phase)]
            tops = {t for layer in kept for t in layer.top}
            assert tops - {b for layer in kept for b in layer.bottom} == expected, phase
        return
    for phase, expected in ((pb.TEST, {"prob"} | {"loss", "accuracy", "accuracy_top5"}),
                            (pb.TRAIN, {"prob", "loss"})):
        kept = [layer for layer in net.layer if _kept(layer, phase)]
        tops = {t for layer in kept for t in layer.top}
        outputs = tops - {b for layer in kept for b in layer.bottom}
        assert outputs and outputs <= expected, (phase, outputs)
        assert ("prob" in outputs) == ("train" not in name), outputs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_independent_param_count(name):
    layers, _ = counted(name)
    exp = EXPECTED[name]
    assert sum(c.learnable for c in layers) == exp.params
    stored = sum(math.prod(b) for c in layers for b in c.blobs)
    assert stored == exp.params + exp.stored


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_independent_shapes_and_macs(name):
    layers, shapes = counted(name)
    exp = EXPECTED[name]
    for blob, shape in exp.shapes.items():
        assert shapes[blob] == shape, blob
    assert sum(c.macs for c in layers) == exp.macs * exp.batch


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_states_the_figures(name):
    text = (ZOO / name).read_text()
    exp = EXPECTED[name]
    assert re.search(rf"^# Params:  {exp.params:,} learnable", text, re.M)
    assert re.search(rf"^# MACs:    {exp.macs:,} per image", text, re.M)
    assert re.search(r"^# Source:  \S", text, re.M)
    assert re.search(r"^# Input:   \S", text, re.M)


def test_readme_table_lists_every_file_with_its_figures():
    readme = (ZOO / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line
            for line in readme.splitlines() if line.startswith("| `")}
    assert sorted(rows) == sorted(EXPECTED)
    for name, exp in EXPECTED.items():
        assert f"{exp.params:,}" in rows[name], name
        assert f"{exp.macs:,}" in rows[name], name


def test_files_are_the_generator_output():
    spec = importlib.util.spec_from_file_location("gen_zoo", ROOT / "tools" / "gen_zoo.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    generated = gen.files()
    assert sorted(generated) == zoo_files()
    for name, text in generated.items():
        assert (ZOO / name).read_text() == text, f"{name} is stale: run tools/gen_zoo.py"


def test_deploy_and_train_nets_share_their_weights():
    """A train/val net and its deploy net must carry the same weight layers."""
    for deploy, train in [("lenet.prototxt", "lenet_train_test.prototxt"),
                          ("alexnet_deploy.prototxt", "alexnet_train_val.prototxt"),
                          ("traffic_signs_lenet.prototxt",
                           "traffic_signs_lenet_train_val.prototxt"),
                          ("happy_face.prototxt", "happy_face_train_val.prototxt")]:
        a = [(c.name, c.blobs) for c in counted(deploy)[0] if c.blobs]
        b = [(c.name, c.blobs) for c in counted(train)[0] if c.blobs]
        assert a == b, (deploy, train)


def test_caffenet_is_alexnet_with_pool_before_norm():
    alex = [(c.name, c.type) for c in counted("alexnet_deploy.prototxt")[0]]
    caffe = [(c.name, c.type) for c in counted("caffenet_deploy.prototxt")[0]]
    assert sorted(alex) == sorted(caffe)
    assert caffe.index(("pool1", "Pooling")) < caffe.index(("norm1", "LRN"))
    assert alex.index(("norm1", "LRN")) < alex.index(("pool1", "Pooling"))


def test_resnet50_blocks_and_strides():
    net = parse(ZOO / "resnet50_deploy.prototxt")
    by_name = {layer.name: layer for layer in net.layer}
    blocks = [n for n, layer in by_name.items() if layer.type == "Eltwise"]
    assert len(blocks) == 16
    assert [n for n in blocks if n.endswith("a")] == ["res2a", "res3a", "res4a", "res5a"]
    for stage in "345":
        for branch in ("branch1", "branch2a"):
            assert list(by_name[f"res{stage}a_{branch}"].convolution_param.stride) == [2]
    bn = [layer for layer in net.layer if layer.type == "BatchNorm"]
    assert len(bn) == 53 and all(b.batch_norm_param.use_global_stats for b in bn)
    convs = [layer for layer in net.layer if layer.type == "Convolution"]
    # Only conv1 has a bias, as in the published weights.
    assert [c.name for c in convs if c.convolution_param.bias_term] == ["conv1"]


def test_googlenet_has_nine_inception_modules_and_no_aux_heads():
    net = parse(ZOO / "googlenet_deploy.prototxt")
    concats = [layer.name for layer in net.layer if layer.type == "Concat"]
    assert concats == [f"inception_{m}/output" for m in
                       ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    assert not [layer for layer in net.layer if layer.name.startswith(("loss1", "loss2"))]


# -------------------------------------------------- published weights ----

def _published(shared_models, ours):
    path, data = PUBLISHED[ours]
    return shared_models / path, data


@pytest.mark.parametrize("ours", sorted(PUBLISHED))
def test_weight_layers_match_published_model(shared_models, ours):
    """Independent check: same weight-carrying layers, order, names, blob shapes."""
    path, data = _published(shared_models, ours)
    theirs = [(c.name, c.type, c.blobs) for c in count(parse(path), data)[0] if c.blobs]
    mine = [(c.name, c.type, c.blobs) for c in counted(ours)[0] if c.blobs]
    assert mine == theirs


# ------------------------------------------------- through netdef.summary ----

def summarize(path, data=None):
    """netdef's summary in TEST phase; ``data`` fixes what a data layer yields
    (its database is not there), as ``--input-shape`` would."""
    from netdef.summary import summarize as netdef_summarize

    shapes = {"data": data, "label": (data[0],)} if data else None
    return netdef_summarize(str(path), phase="TEST", input_shapes=shapes)


def _shape_of(summary, blob):
    """Shape of ``blob`` as produced by the last layer writing it."""
    found = None
    for layer in summary.layers:
        for top, shape in zip(layer.tops, layer.top_shapes, strict=True):
            if top == blob:
                found = shape
    assert found is not None, f"no layer gives {blob!r} a known shape"
    return tuple(found)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_summary_totals(name):
    exp = EXPECTED[name]
    s = summarize(ZOO / name, exp.data)
    assert s.total_params == exp.params
    assert s.total_stored == exp.params + exp.stored
    assert s.total_macs == exp.macs * exp.batch


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_summary_shapes(name):
    exp = EXPECTED[name]
    s = summarize(ZOO / name, exp.data)
    for blob, shape in exp.shapes.items():
        assert _shape_of(s, blob) == shape, blob


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_summary_agrees_with_independent_count(name):
    s = summarize(ZOO / name, EXPECTED[name].data)
    layers, _ = counted(name)
    mine = [(c.name, c.blobs, c.learnable, c.macs) for c in layers if c.blobs or c.macs]
    theirs = [(x.name, [tuple(b) for b in x.param_shapes], x.params, x.macs)
              for x in s.layers if x.stored or x.macs]
    assert theirs == mine


@pytest.mark.parametrize("ours", sorted(PUBLISHED))
def test_summary_matches_published_model(shared_models, ours):
    path, data = _published(shared_models, ours)
    theirs = summarize(path, data)
    mine = summarize(ZOO / ours)

    def weights(s):
        return [(x.name, x.type, [tuple(b) for b in x.param_shapes], x.params, x.stored)
                for x in s.layers if x.stored]

    assert weights(mine) == weights(theirs)
    assert mine.total_params == theirs.total_params
