"""netdef.deploy: a train_val net -> its deploy net."""
import pytest

from netdef.deploy import make_deploy
from netdef.errors import NetdefError
from netdef.frontend.parse import to_text
from netdef.frontend.schema import pb
from netdef.summary import summarize

TRAIN_VAL = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TRAIN }
        dummy_data_param { shape { dim: 64 dim: 3 dim: 8 dim: 8 } shape { dim: 64 } } }
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TEST }
        dummy_data_param { shape { dim: 16 dim: 3 dim: 8 dim: 8 } shape { dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3
                            weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" include { phase: TRAIN } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
        include { phase: TEST } }
"""


def names(net: pb.NetParameter) -> list[str]:
    return [layer.name for layer in net.layer]


def test_tiny_train_val():
    net = make_deploy(TRAIN_VAL)
    assert net.name == "tiny"
    assert names(net) == ["data", "conv1", "relu1", "fc", "prob"]
    data = net.layer[0]
    assert data.type == "Input" and list(data.top) == ["data"]
    assert list(data.input_param.shape[0].dim) == [16, 3, 8, 8]
    prob = net.layer[-1]
    assert (prob.type, list(prob.bottom), list(prob.top)) == ("Softmax", ["fc"], ["prob"])
    text = to_text(net)
    for gone in ("filler", "lr_mult", "include", "label", "Accuracy", "Loss", "DummyData"):
        assert gone not in text
    s = summarize(text)
    assert s.outputs == ["prob"] and s.layer("prob").top_shapes == [(16, 5)]


def test_batch_and_input_shape_override():
    net = make_deploy(TRAIN_VAL, batch=1)
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    net = make_deploy(TRAIN_VAL, input_shapes={"data": (2, 3, 10, 10)})
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3, 10, 10]
    with pytest.raises(NetdefError, match="batch"):
        make_deploy(TRAIN_VAL, batch=0)


AUX = TRAIN_VAL.replace(
    'layer { name: "loss" type: "SoftmaxWithLoss"',
    'layer { name: "aux/pool" type: "Pooling" bottom: "conv1" top: "aux/pool"\n'
    '        pooling_param { pool: AVE global_pooling: true } }\n'
    'layer { name: "aux/fc" type: "InnerProduct" bottom: "aux/pool" top: "aux/fc"\n'
    '        inner_product_param { num_output: 5 } }\n'
    'layer { name: "aux/loss" type: "SoftmaxWithLoss" bottom: "aux/fc" bottom: "label"\n'
    '        top: "aux/loss" loss_weight: 0.3 }\n'
    'layer { name: "aux/acc" type: "Accuracy" bottom: "aux/fc" bottom: "label"\n'
    '        top: "aux/acc" include { phase: TEST } }\n'
    'layer { name: "loss" type: "SoftmaxWithLoss"')


def test_auxiliary_classifier_branch_is_removed():
    assert names(make_deploy(AUX)) == ["data", "conv1", "relu1", "fc", "prob"]


def test_loss_only_in_train_still_gives_prob():
    text = TRAIN_VAL.replace('top: "loss" }', 'top: "loss" include { phase: TRAIN } }')
    assert names(make_deploy(text))[-1] == "prob"


def test_label_on_the_main_path_is_an_error():
    text = TRAIN_VAL.replace(
        'layer { name: "fc" type: "InnerProduct" bottom: "conv1"',
        'layer { name: "lab" type: "Reshape" bottom: "label" top: "lab"\n'
        '        reshape_param { shape { dim: 16 dim: 1 dim: 1 dim: 1 } } }\n'
        'layer { name: "mix" type: "Concat" bottom: "conv1" bottom: "lab" top: "mix" }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "mix"')
    text = text.replace("dim: 16 dim: 1 dim: 1 dim: 1", "dim: 16 dim: 1 dim: 6 dim: 6")
    with pytest.raises(NetdefError, match="label"):
        make_deploy(text)


def test_label_only_branch_is_removed():
    text = TRAIN_VAL.replace(
        'layer { name: "loss"',
        'layer { name: "lab" type: "Power" bottom: "label" top: "lab2" }\n'
        'layer { name: "loss2" type: "SoftmaxWithLoss" bottom: "fc" bottom: "lab2" top: "l2"\n'
        '        loss_weight: 0.1 }\n'
        'layer { name: "loss"')
    assert names(make_deploy(text)) == ["data", "conv1", "relu1", "fc", "prob"]


def test_sigmoid_cross_entropy_gives_sigmoid():
    text = TRAIN_VAL.replace('"SoftmaxWithLoss"', '"SigmoidCrossEntropyLoss"').replace(
        'bottom: "fc" bottom: "label" top: "loss"', 'bottom: "fc" bottom: "fc" top: "loss"')
    text = text.replace('layer { name: "accuracy"', '# layer { name: "accuracy"', 1)
    text = text.replace('top: "accuracy"\n        include { phase: TEST } }',
                        'top: "accuracy"\n#        include { phase: TEST } }')
    assert make_deploy(text).layer[-1].type == "Sigmoid"


def test_unknown_data_shape_asks_for_input_shape():
    text = TRAIN_VAL.replace(
        'type: "DummyData" top: "data" top: "label" include { phase: TEST }\n'
        '        dummy_data_param { shape { dim: 16 dim: 3 dim: 8 dim: 8 } shape { dim: 16 } }',
        'type: "Data" top: "data" top: "label" include { phase: TEST }\n'
        '        data_param { source: "/nowhere/db" batch_size: 16 }')
    with pytest.raises(NetdefError, match="--input-shape data="):
        make_deploy(text)
    net = make_deploy(text, input_shapes={"data": (16, 3, 8, 8), "label": (16,)})
    assert list(net.layer[0].input_param.shape[0].dim) == [16, 3, 8, 8]


PUBLISHED = [
    ("bvlc_alexnet/train_val.prototxt", "bvlc_alexnet/deploy.prototxt"),
    ("bvlc_reference_caffenet/train_val.prototxt", "bvlc_reference_caffenet/deploy.prototxt"),
    ("bvlc_googlenet/train_val.prototxt", "bvlc_googlenet/deploy.prototxt"),
    ("squeezenet/SqueezeNet_v1.0/train_val.prototxt", "squeezenet/SqueezeNet_v1.0/deploy.prototxt"),
    ("squeezenet/SqueezeNet_v1.1/train_val.prototxt", "squeezenet/SqueezeNet_v1.1/deploy.prototxt"),
]


@pytest.mark.parametrize("train_val,deploy", PUBLISHED, ids=[p[1] for p in PUBLISHED])
def test_matches_published_deploy(shared_models, train_val, deploy):
    theirs = summarize(str(shared_models / deploy))
    batch = theirs.blob_shapes[theirs.inputs[0]][0]
    mine = summarize(to_text(make_deploy(str(shared_models / train_val), batch=batch)))

    def layers(s):   # the Input layer's name differs in headered deploy files
        return [(x.name, x.type, x.tops, x.top_shapes) for x in s.layers if x.type != "Input"]

    assert layers(mine) == layers(theirs)
    assert mine.inputs == theirs.inputs
    assert [mine.blob_shapes[b] for b in mine.inputs] == [theirs.blob_shapes[b]
                                                          for b in theirs.inputs]
    assert mine.total_params == theirs.total_params
