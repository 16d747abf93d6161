"""Whole-net gradients of zoo nets against finite differences on sampled
elements: AlexNet's train_val net (grouped conv, LRN, overlapping pooling,
dropout) with random weights, and ResNet-50 in TRAIN phase (BatchNorm on
batch statistics, Scale, Eltwise). The tolerance is looser than a single
layer's: float32 rounding adds up over 20 to 50 layers. The first
convolution's biases are left out of AlexNet's check: a step of one bias
moves 6,050 activations at once, enough of which cross a ReLU or max-pool
switch that the loss is not smooth at any step float32 can resolve (the
estimate wanders by 5% between steps 1e-1 and 1e-3, around backward's value)."""
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
    # Every weight reaches thousands of ReLU and max-pool switches, so the
    # finite-difference estimate is only good to a few percent at any step
    # float32 resolves (conv4[233, 136, 1, 0]: 0.315, 0.308, 0.328, 0.318,
    # 0.343 at steps 1e-2 .. 1e-4 against backward's 0.348): a 5% check of
    # the wiring; the strict checks are the per-layer ones.
    checker = GradientChecker(stepsize=1e-3, threshold=5e-2, max_elements=3)
    checked = checker.check_net(net, ["data"], params=["conv2", "conv4", "fc6", "fc8"])
    assert checked >= 20


def test_resnet50_train_phase_gradients():
    source = read_net(str(ZOO / "resnet50_deploy.prototxt"))
    for layer in source.param.layer:
        if layer.type == "BatchNorm":
            layer.batch_norm_param.ClearField("use_global_stats")   # batch statistics
        if layer.name == "fc1000":
            layer.loss_weight.append(1.0)        # a loss: the sum of the logits
    net = netdef.Net(source, phase="TRAIN", input_shapes={"data": (1, 3, 224, 224)})
    randomize_weights(net, seed=4)
    rng = np.random.default_rng(1)
    net.forward(data=rng.standard_normal((1, 3, 224, 224)).astype(np.float32))
    # Early layers feed 25,088 activations per channel into BatchNorm and
    # ReLU: a finite step there crosses many ReLU kinks (conv1: 23 .. 72 for
    # steps 3e-2 .. 1e-3, against backward's 74.5), so the check samples the
    # last two stages, where the estimates converge, with a small step.
    checker = GradientChecker(stepsize=1e-3, threshold=2e-2, max_elements=2)
    checked = checker.check_net(net, [], params=["res4f_branch2c", "scale4f_branch2c",
                                                 "res5c_branch2b", "res5c_branch2c",
                                                 "scale5c_branch2c", "fc1000"])
    assert checked >= 10
