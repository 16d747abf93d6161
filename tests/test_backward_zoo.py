"""Whole-net gradients of zoo nets against finite differences on sampled
elements: AlexNet's train_val net (grouped conv, LRN, overlapping pooling,
dropout) with random weights, and ResNet-50 in TRAIN phase (BatchNorm on
batch statistics, Scale, Eltwise). The tolerance is looser than a single
layer's: float32 rounding adds up over 20 to 50 layers."""
from __future__ import annotations

import pathlib

import numpy as np

import netdef
from netdef.frontend.source import read_net
from netdef.testing import GradientChecker, randomize_weights

ZOO = pathlib.Path(__file__).resolve().parents[1] / "zoo_defs"


def test_alexnet_train_val_gradients():
    net = netdef.Net(str(ZOO / "alexnet_train_val.prototxt"), phase="TRAIN",
                     input_shapes={"data": (2, 3, 227, 227), "label": (2,)},
                     force_backward=True)
    randomize_weights(net, seed=3)
    rng = np.random.default_rng(0)
    net.forward(data=rng.standard_normal((2, 3, 227, 227)).astype(np.float32),
                label=np.array([3, 917], np.float32))
    checker = GradientChecker(stepsize=1e-2, threshold=2e-2, max_elements=4)
    checked = checker.check_net(net, ["data"], params=["conv1", "conv2", "conv5", "fc6", "fc8"])
    assert checked >= 30


def test_resnet50_train_phase_gradients():
    source = read_net(str(ZOO / "resnet50_deploy.prototxt"))
    for layer in source.param.layer:
        if layer.type == "BatchNorm":
            layer.batch_norm_param.ClearField("use_global_stats")   # batch statistics
        if layer.name == "fc1000":
            layer.loss_weight.append(1.0)        # a loss: the sum of the logits
    net = netdef.Net(source, phase="TRAIN", input_shapes={"data": (2, 3, 224, 224)})
    randomize_weights(net, seed=4)
    rng = np.random.default_rng(1)
    net.forward(data=rng.standard_normal((2, 3, 224, 224)).astype(np.float32))
    checker = GradientChecker(stepsize=1e-2, threshold=2e-2, max_elements=3)
    checked = checker.check_net(net, [], params=["conv1", "scale_conv1", "res2a_branch2b",
                                                 "scale4f_branch2c", "res5c_branch2c",
                                                 "fc1000"])
    assert checked >= 15
