"""Unmodified pycaffe scripts through ``netdef pycaffe`` (a subprocess, as a user runs them).

Each script below is written the way pycaffe's examples are (``import caffe``,
nothing netdef-specific); the test runs it with ``python -m netdef pycaffe``
and checks what it computed against netdef's own API.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
REPO = Path(__file__).resolve().parents[1]


def run_pycaffe(script: str, *args, cwd, module: bool = False, name: str = "script.py"):
    path = Path(cwd) / name
    path.write_text(textwrap.dedent(script))
    entry = ["-m", "netdef.compat.caffe"] if module else ["-m", "netdef", "pycaffe"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *entry, str(path), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def ok(done) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


# ---------------------------------------------------------- the runner ----

IMPORTS = """
import sys, os, json
import caffe
from caffe import layers as L, params as P
import caffe.io
from caffe.proto import caffe_pb2
import caffe.draw
from caffe.coord_map import crop
from caffe.net_spec import NetSpec
from caffe.classifier import Classifier
from caffe.detector import Detector
import netdef.compat.caffe as compat
json.dump({"argv": sys.argv, "name": __name__, "path0": sys.path[0],
           "same": caffe is compat and caffe.io is compat.io and caffe.NetSpec is NetSpec,
           "pb2": caffe_pb2.NetParameter.__module__, "version": caffe.__version__,
           "draw": caffe.draw.__name__, "crop": crop.__module__},
          open("out.json", "w"))
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("module", [False, True])
def test_runner_resolves_every_caffe_import_and_keeps_python_semantics(tmp_path, module):
    done = run_pycaffe(IMPORTS, 3, "--flag", "x", cwd=tmp_path, module=module)
    assert done.returncode == 3, done.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["argv"] == [str(tmp_path / "script.py"), "3", "--flag", "x"]
    assert out["name"] == "__main__" and out["path0"] == str(tmp_path)
    assert out["same"] and out["version"] == "1.0.0"
    assert out["draw"] == "netdef.compat.caffe_draw"
    assert out["crop"] == "netdef.compat.coord_map"


def test_runner_reports_a_failing_script_as_python_does(tmp_path):
    done = run_pycaffe("""
        import caffe
        def inner():
            raise KeyError("no such blob")
        inner()
        """, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert 'script.py", line 5' in done.stderr and "KeyError: 'no such blob'" in done.stderr
    assert "runner.py" not in done.stderr and "runpy" not in done.stderr
    done = run_pycaffe("import sys; sys.exit('bye')", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == "bye"
    done = run_pycaffe("print('fine')", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "fine\n"


def test_netdef_installs_no_caffe_package(tmp_path):
    done = subprocess.run([sys.executable, "-c",
                           "import importlib.util, netdef.compat.caffe, netdef.compat.runner; "
                           "print(importlib.util.find_spec('caffe'))"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.stdout.strip() == "None", done.stderr


def test_runner_in_process_restores_argv_and_path(tmp_path):
    from netdef.compat import runner

    script = tmp_path / "s.py"
    script.write_text("import sys, caffe\nassert sys.argv[1:] == ['a']\nraise SystemExit(0)\n")
    argv, path = list(sys.argv), list(sys.path)
    try:
        assert runner.run(script, ["a"]) == 0
        assert sys.argv == argv and sys.path == path
    finally:
        runner.uninstall()
    assert "caffe" not in sys.modules


# -------------------------------------------------- NetSpec + training ----

LENET_TRAIN = """
import json
import numpy as np
import caffe
from caffe import layers as L, params as P

def lenet(batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.MemoryData(batch_size=batch_size, channels=1, height=12, width=12,
                                   ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=6, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=3, num_output=8, weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=32, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=2, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()

with open('lenet_auto_train.prototxt', 'w') as f:
    f.write(str(lenet(16)))
with open('lenet_auto_test.prototxt', 'w') as f:
    f.write(str(lenet(16)))

from caffe.proto import caffe_pb2
s = caffe_pb2.SolverParameter()
s.train_net = 'lenet_auto_train.prototxt'
s.test_net.append('lenet_auto_test.prototxt')
s.test_interval = 500
s.test_iter.append(4)
s.max_iter = 60
s.base_lr = 0.05
s.momentum = 0.9
s.weight_decay = 5e-4
s.lr_policy = 'inv'
s.gamma = 1e-4
s.power = 0.75
s.display = 0
s.random_seed = 7
s.snapshot_prefix = 'lenet'
with open('lenet_auto_solver.prototxt', 'w') as f:
    f.write(str(s))

rng = np.random.RandomState(0)
X = rng.randn(64, 1, 12, 12).astype(np.float32)
y = (X[:, 0, :, :6].mean(axis=(1, 2)) > X[:, 0, :, 6:].mean(axis=(1, 2))).astype(np.float32)

caffe.set_mode_cpu()
solver = caffe.SGDSolver('lenet_auto_solver.prototxt')
print([(k, v.data.shape) for k, v in solver.net.blobs.items()])
print([(k, v[0].data.shape) for k, v in solver.net.params.items()])
solver.net.set_input_arrays(X, y)
solver.test_nets[0].set_input_arrays(X, y)
train_loss = np.zeros(60)
for it in range(60):
    solver.step(1)
    train_loss[it] = solver.net.blobs['loss'].data
correct = 0
for test_it in range(4):
    solver.test_nets[0].forward()
    correct += sum(solver.test_nets[0].blobs['score'].data.argmax(1)
                   == solver.test_nets[0].blobs['label'].data.ravel())
json.dump({"loss": train_loss.tolist(), "accuracy": correct / 64.0, "iter": solver.iter},
          open('result.json', 'w'))
"""


def test_netspec_lenet_script_emits_parses_and_trains(tmp_path):
    done = run_pycaffe(LENET_TRAIN, cwd=tmp_path)
    ok(done)
    result = json.loads((tmp_path / "result.json").read_text())
    loss = np.array(result["loss"])
    assert result["iter"] == 60 and np.isfinite(loss).all()
    assert loss[-10:].mean() < 0.8 * loss[:10].mean()
    assert result["accuracy"] >= 0.75
    # the emitted prototxt is a net netdef reads back layer for layer
    from netdef.net import Net

    net = Net(str(tmp_path / "lenet_auto_train.prototxt"), phase="TRAIN")
    assert net.layer_names == ["data", "conv1", "pool1", "conv2", "pool2", "fc1", "relu1",
                               "score", "loss"]


# -------------------------------------------------------- classification ----

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 10 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool1" top: "fc6"
  inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.1 }
    bias_filler { type: "constant" value: 0.05 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc7" top: "prob" }
"""

FULL_CONV = """
name: "tiny_full_conv"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 14 dim: 14 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6-conv" type: "Convolution" bottom: "pool1" top: "fc6-conv"
  convolution_param { num_output: 8 kernel_size: 4 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6-conv" top: "fc6-conv" }
layer { name: "fc7-conv" type: "Convolution" bottom: "fc6-conv" top: "fc7-conv"
  convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "fc7-conv" top: "prob" }
"""


@pytest.fixture
def model(tmp_path):
    from PIL import Image

    from netdef.net import Net

    (tmp_path / "deploy.prototxt").write_text(TINY)
    (tmp_path / "full_conv.prototxt").write_text(FULL_CONV)
    Net(str(tmp_path / "deploy.prototxt"), seed=3).save(str(tmp_path / "tiny.caffemodel"))
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((23, 31, 3)) * 255).astype(np.uint8)).save(tmp_path / "cat.png")
    np.save(tmp_path / "mean.npy", rng.random((3, 16, 16)) * 50 + 100)
    return tmp_path


CLASSIFY = """
import sys
import numpy as np
import caffe

model_def, model_weights, image_file, mean_file = sys.argv[1:5]
caffe.set_mode_cpu()
net = caffe.Net(model_def, model_weights, caffe.TEST)
mu = np.load(mean_file).mean(1).mean(1)
transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
transformer.set_transpose('data', (2, 0, 1))
transformer.set_mean('data', mu)
transformer.set_raw_scale('data', 255)
transformer.set_channel_swap('data', (2, 1, 0))
net.blobs['data'].reshape(1, 3, 10, 10)
image = caffe.io.load_image(image_file)
transformed_image = transformer.preprocess('data', image)
net.blobs['data'].data[...] = transformed_image
output = net.forward()
output_prob = output['prob'][0]
print('predicted class is:', output_prob.argmax())
feat = net.blobs['pool1'].data[0]

# classify.py's way: a Classifier with the full mean image, 10 crops
classifier = caffe.Classifier(model_def, model_weights, image_dims=(12, 12),
                              mean=np.load(mean_file), raw_scale=255.0,
                              channel_swap=(2, 1, 0))
inputs = [caffe.io.load_image(image_file)]
scores = classifier.predict(inputs, oversample=True)
center = classifier.predict(inputs, oversample=False)
np.savez('out.npz', prob=output_prob, feat=feat, scores=scores, center=center)
"""


def test_classification_script(model):
    ok(run_pycaffe(CLASSIFY, "deploy.prototxt", "tiny.caffemodel", "cat.png", "mean.npy",
                   cwd=model))
    out = np.load(model / "out.npz")
    from netdef.images import Preprocessor, load_image
    from netdef.net import Net

    net = Net(str(model / "deploy.prototxt"), weights=str(model / "tiny.caffemodel"))
    mean = np.load(model / "mean.npy")
    pre = Preprocessor((1, 3, 10, 10), mean=mean.mean(1).mean(1))
    x = pre(load_image(str(model / "cat.png")))[None]
    np.testing.assert_allclose(out["prob"], net.forward(data=x)["prob"][0], rtol=1e-4,
                               atol=1e-6)
    assert out["feat"].shape == (4, 4, 4)
    assert out["scores"].shape == out["center"].shape == (1, 5)
    np.testing.assert_allclose(out["scores"].sum(), 1, rtol=1e-5)


# -------------------------------------------------------- net surgery ----

SURGERY = """
import numpy as np
import caffe

net = caffe.Net('deploy.prototxt', 'tiny.caffemodel', caffe.TEST)
params = ['fc6', 'fc7']
fc_params = {pr: (net.params[pr][0].data, net.params[pr][1].data) for pr in params}
for fc in params:
    print('{} weights are {} dimensional and biases are {} dimensional'.format(
        fc, fc_params[fc][0].shape, fc_params[fc][1].shape))

net_full_conv = caffe.Net('full_conv.prototxt', 'tiny.caffemodel', caffe.TEST)
params_full_conv = ['fc6-conv', 'fc7-conv']
conv_params = {pr: (net_full_conv.params[pr][0].data, net_full_conv.params[pr][1].data)
               for pr in params_full_conv}
for pr, pr_conv in zip(params, params_full_conv):
    conv_params[pr_conv][0].flat = fc_params[pr][0].flat  # flat unrolls the arrays
    conv_params[pr_conv][1][...] = fc_params[pr][1]
net_full_conv.save('tiny_full_conv.caffemodel')

rng = np.random.RandomState(1)
im = rng.rand(1, 3, 14, 14).astype(np.float32) * 50
fresh = caffe.Net('full_conv.prototxt', 'tiny_full_conv.caffemodel', caffe.TEST)
out = fresh.forward_all(data=im)
prob_map = out['prob'][0]
print(prob_map.argmax(axis=0))

# every location of the map is the original net on the window under it
net.blobs['data'].reshape(1, 3, 10, 10)
worst = 0.0
for i in range(prob_map.shape[1]):
    for j in range(prob_map.shape[2]):
        p = net.forward(data=im[:, :, 2 * i:2 * i + 10, 2 * j:2 * j + 10])['prob'][0]
        worst = max(worst, float(np.abs(p - prob_map[:, i, j]).max()))
np.save('surgery.npy', np.array([worst, prob_map.shape[1], prob_map.shape[2]]))
"""


def test_net_surgery_script_fully_convolutional(model):
    done = run_pycaffe(SURGERY, cwd=model)
    ok(done)
    assert "fc6 weights are (8, 64) dimensional and biases are (8,) dimensional" in done.stdout
    worst, h, w = np.load(model / "surgery.npy")
    assert (h, w) == (3, 3)
    assert worst < 1e-5
    assert (model / "tiny_full_conv.caffemodel").exists()


# ------------------------------------------- with the shared models ----

SURGERY_CONV = """
import numpy as np
from PIL import Image
import caffe

net = caffe.Net(MODELS + 'net_surgery/conv.prototxt', caffe.TEST)
im = np.array(Image.open(MODELS + 'images/cat_gray.jpg'))
im_input = im[np.newaxis, np.newaxis, :, :]
net.blobs['data'].reshape(*im_input.shape)
net.blobs['data'].data[...] = im_input
net.forward()
conv0 = net.blobs['conv'].data[0, 0]
pre = float(conv0.mean())
net.params['conv'][1].data[0] = 1.
net.forward()
post = float(conv0.mean())

ksize = net.params['conv'][0].data.shape[2:]
sigma = 1.
y, x = np.mgrid[-ksize[0]//2 + 1:ksize[0]//2 + 1, -ksize[1]//2 + 1:ksize[1]//2 + 1]
g = np.exp(-((x**2 + y**2)/(2.0*sigma**2)))
gaussian = (g / g.sum()).astype(np.float32)
net.params['conv'][0].data[0] = gaussian
net.params['conv'][0].data[1:] = 0.
sobel = np.array((-1, -2, -1, 0, 0, 0, 1, 2, 1), dtype=np.float32).reshape((3,3))
net.params['conv'][0].data[1, 0, 1:-1, 1:-1] = sobel
net.params['conv'][0].data[2, 0, 1:-1, 1:-1] = sobel.T
net.forward()
np.savez('conv.npz', pre=pre, post=post, out=net.blobs['conv'].data[0], im=im,
         w=net.params['conv'][0].data, b=net.params['conv'][1].data)
"""


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models is not present")
def test_shared_net_surgery_conv_editing(tmp_path):
    ok(run_pycaffe(f"MODELS = {str(SHARED) + '/'!r}\n" + textwrap.dedent(SURGERY_CONV),
                   cwd=tmp_path))
    r = np.load(tmp_path / "conv.npz")
    assert float(r["post"]) == pytest.approx(float(r["pre"]) + 1.0, abs=1e-3)
    im, w, b = r["im"].astype(np.float64), r["w"], r["b"]
    # reference correlation for the three edited filters
    windows = np.lib.stride_tricks.sliding_window_view(im, (5, 5))
    for k in range(3):
        ref = (windows * w[k, 0]).sum(axis=(-1, -2)) + b[k]
        np.testing.assert_allclose(r["out"][k], ref, rtol=1e-4, atol=1e-2)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models is not present")
def test_shared_classifier_with_the_imagenet_mean(model):
    script = CLASSIFY.replace("image_dims=(12, 12)", "image_dims=(256, 256)")
    ok(run_pycaffe(script, "deploy.prototxt", "tiny.caffemodel", SHARED / "images/cat.jpg",
                   SHARED / "imagenet_mean/ilsvrc_2012_mean.npy", cwd=model))
    out = np.load(model / "out.npz")
    assert out["scores"].shape == (1, 5) and np.isfinite(out["scores"]).all()


# ---------------------------------------------- a Python layer module ----

PYLOSS = """
import caffe
import numpy as np

class EuclideanLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")
    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)
    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.
    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                bottom[i].diff[...] = (1 if i == 0 else -1) * self.diff / bottom[i].num
"""

LINREG = """
import numpy as np
import caffe
from caffe import layers as L

n = caffe.NetSpec()
n.x, n.y = L.DummyData(shape=[dict(dim=[10, 3, 2]), dict(dim=[10, 3, 2])],
                       data_filler=dict(type='gaussian'), ntop=2)
n.ipx = L.InnerProduct(n.x, num_output=10, weight_filler=dict(type='xavier'))
n.ipy = L.InnerProduct(n.y, num_output=10, weight_filler=dict(type='xavier'))
n.loss = L.Python(n.ipx, n.ipy, module='pyloss', layer='EuclideanLossLayer', loss_weight=1)
open('linreg.prototxt', 'w').write(str(n.to_proto()))
net = caffe.Net('linreg.prototxt', caffe.TRAIN)
net.forward()
net.backward()
d = net.blobs['ipx'].data - net.blobs['ipy'].data
np.save('linreg.npy', [net.blobs['loss'].data.ravel()[0], (d ** 2).sum() / 20,
                       np.abs(net.blobs['ipx'].diff - d / 10).max()])
"""


def test_python_layer_module_imports_caffe_under_the_runner(tmp_path):
    """pycaffe's linreg example: the layer module's own ``import caffe`` is netdef too."""
    (tmp_path / "pyloss.py").write_text(textwrap.dedent(PYLOSS))
    ok(run_pycaffe(LINREG, cwd=tmp_path))
    loss, expected, grad_err = np.load(tmp_path / "linreg.npy")
    assert loss == pytest.approx(expected, rel=1e-5) and grad_err < 1e-6
