"""The Python layer (``type: "Python"``, pycaffe's protocol): lookup and
errors, the pycaffe Blob views and BlobVec, running inside forward and
backward, and a Euclidean loss written in Python (tests/pyloss.py) that is
gradient-checked, compared with the built-in loss, and trained."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from layer_harness import check_gradients, infer_shapes, make_layer, run_layer, wired
from netdef.compat.caffe_layer import Layer as CaffeLayer
from netdef.errors import GraphError, NetdefError, ShapeError
from netdef.frontend.schema import pb
from netdef.testing import GradientChecker
from reference import euclidean_loss_reference

# ---- a module written to a temporary folder (not on sys.path) ---------------
MODULE = textwrap.dedent('''
    import numpy as np
    from netdef.compat.caffe_layer import Layer

    calls = []

    class Scale(Layer):
        def setup(self, bottom, top):
            self.factor = float(self.param_str or 1)
            if len(bottom) != 1:
                raise Exception("need one bottom")

        def reshape(self, bottom, top):
            calls.append("reshape")
            if bottom[0].count > 1000:
                raise ValueError("too big")
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = bottom[0].data * self.factor + self.phase

        def backward(self, top, propagate_down, bottom):
            calls.append(("backward", list(propagate_down)))
            if propagate_down[0]:
                bottom[0].diff[...] = top[0].diff * self.factor

    class Affine(Layer):
        """y = w * x + b per channel; w and b are the layer's own blobs."""
        def setup(self, bottom, top):
            c = bottom[0].channels
            self.blobs.add_blob(c)
            self.blobs.add_blob(1, c)
            self.blobs[0].data[...] = np.arange(1, c + 1)
            self.blobs[1].data[...] = 0.5

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].shape)

        def forward(self, bottom, top):
            w = self.blobs[0].data.reshape(1, -1, 1, 1)
            b = self.blobs[1].data.reshape(1, -1, 1, 1)
            top[0].data[...] = bottom[0].data * w + b

        def backward(self, top, propagate_down, bottom):
            w = self.blobs[0].data.reshape(1, -1, 1, 1)
            g = top[0].diff
            self.blobs[0].diff[...] += (g * bottom[0].data).sum(axis=(0, 2, 3))
            self.blobs[1].diff[...] += g.sum(axis=(0, 2, 3)).reshape(1, -1)
            if propagate_down[0]:
                bottom[0].diff[...] = g * w

    class Plain:
        """Not a caffe.Layer: a plain class with the methods is enough."""
        def setup(self, bottom, top):
            pass

        def reshape(self, bottom, top):
            top[0].reshape(bottom[0].num, bottom[0].channels, bottom[0].height,
                           bottom[0].width)

        def forward(self, bottom, top):
            top[0].data[...] = bottom[0].count

    class Source(Layer):
        """A data layer in Python: no bottoms, counts its batches."""
        def setup(self, bottom, top):
            self.n = 0

        def reshape(self, bottom, top):
            top[0].reshape(2, 3)

        def forward(self, bottom, top):
            self.n += 1
            top[0].data[...] = self.n

        def backward(self, top, propagate_down, bottom):
            pass

    class Grows(Layer):
        def setup(self, bottom, top):
            self.k = 1

        def reshape(self, bottom, top):
            top[0].reshape(self.k, 2)
            self.k += 1

        def forward(self, bottom, top):
            pass

    class NoBackward(Layer):
        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].shape)

        def forward(self, bottom, top):
            top[0].data[...] = bottom[0].data

    not_a_class = 3
''')


@pytest.fixture
def module_dir(tmp_path, request):
    name = "pylayer_" + "".join(c if c.isalnum() else "_" for c in request.node.name)
    (tmp_path / f"{name}.py").write_text(MODULE)
    return tmp_path, name


def python_layer(module, cls, param_str="", phase="TEST", name="py", folder=None):
    lay = make_layer(f'layer {{ name: "{name}" type: "Python" bottom: "x" top: "y" '
                     f'python_param {{ module: "{module}" layer: "{cls}" '
                     f'param_str: "{param_str}" }} }}', phase)
    lay.search_path = None if folder is None else str(folder)
    return lay


# ---- the layer on its own -------------------------------------------------------
def test_python_layer_runs_like_pycaffe(module_dir):
    folder, module = module_dir
    lay = python_layer(module, "Scale", param_str="2.5", phase="TRAIN", folder=folder)
    assert infer_shapes(lay, [(2, 3)]) == [(2, 3)]
    assert lay.impl.param_str == "2.5" and lay.impl.phase == pb.TRAIN
    assert lay.impl.type == "Python" and len(lay.impl.blobs) == 0
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    calls = __import__(module).calls
    bottoms, tops = wired(lay)
    before = calls.count("reshape")
    bottoms[0].data[...] = x
    lay.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, x * 2.5 + pb.TRAIN)
    # Caffe reshapes before every forward
    assert calls.count("reshape") == before + 1
    tops[0].diff[...] = 1.0
    lay.backward(tops, [True], bottoms)
    assert calls[-1] == ("backward", [True]) and (bottoms[0].diff == 2.5).all()


def test_plain_class_and_legacy_accessors(module_dir):
    folder, module = module_dir
    lay = python_layer(module, "Plain")
    lay.search_path = [str(folder)]
    assert infer_shapes(lay, [(2, 3)]) == [(2, 3, 1, 1)]
    (y,) = run_layer(lay, [np.zeros((2, 3), np.float32)])
    assert (y == 6).all()


def test_parameter_blobs_from_add_blob(module_dir):
    folder, module = module_dir
    lay = python_layer(module, "Affine", folder=folder)
    infer_shapes(lay, [(2, 3, 2, 2)])
    assert [b.shape for b in lay.blobs] == [(3,), (1, 3)]
    assert lay.learnable == [True, True] and lay.num_params == 6
    np.testing.assert_array_equal(lay.blobs[0].data, [1, 2, 3])
    vec = lay.impl.blobs
    assert len(vec) == 2 and vec[1].shape == (1, 3) and [b.count for b in vec] == [3, 3]
    assert vec[0].num == 3 and vec[1].channels == 3 and len(vec[:1]) == 1


@pytest.mark.parametrize("cls,shape", [("Scale", (2, 3, 4)), ("Affine", (2, 3, 2, 3))])
def test_gradients_of_python_layers(module_dir, cls, shape):
    folder, module = module_dir
    lay = python_layer(module, cls, param_str="1.5", folder=folder)
    x = np.random.default_rng(0).standard_normal(shape)
    assert check_gradients(lay, [x], stepsize=1e-2, threshold=1e-3) > 0


def test_standalone_caffe_layer_has_its_own_blobs():
    class Two(CaffeLayer):
        def setup(self, bottom, top):
            self.blobs.add_blob(2, 2)

    layer = Two()
    layer.setup([], [])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (2, 2)
    assert (layer.blobs[0].data == 0).all() and layer.param_str == "" and layer.phase == 1
    with pytest.raises(TypeError):
        layer.blobs.add_blob("a")
    with pytest.raises(NotImplementedError, match="must define forward"):
        layer.forward([], [])


# ---- errors ---------------------------------------------------------------------
def test_missing_module_names_layer_module_and_paths(tmp_path):
    lay = python_layer("no_such_module_for_netdef", "Layer", folder=tmp_path)
    with pytest.raises(GraphError) as err:
        infer_shapes(lay, [(2, 3)])
    text = str(err.value)
    assert "layer 'py' (Python)" in text
    assert "cannot find Python module 'no_such_module_for_netdef'" in text
    assert str(tmp_path) in text and "PYTHONPATH" in text


def test_missing_class_and_bad_class(module_dir):
    folder, module = module_dir
    lay = python_layer(module, "Scal", folder=folder)
    with pytest.raises(GraphError, match=f"module '{module}' .*{module}.py.* has no class "
                                         "'Scal'.*did you mean 'Scale'"):
        infer_shapes(lay, [(2, 3)])
    lay = python_layer(module, "not_a_class", folder=folder)
    with pytest.raises(GraphError, match="has no class"):
        infer_shapes(lay, [(2, 3)])
    lay = make_layer('layer { name: "p" type: "Python" bottom: "x" top: "y" '
                     'python_param { module: "m" } }')
    with pytest.raises(GraphError, match="needs both 'module' and 'layer'"):
        infer_shapes(lay, [(2, 3)])


def test_module_that_fails_to_import(tmp_path):
    (tmp_path / "broken_pylayer_mod.py").write_text("import numpy\nraise RuntimeError('boom')\n")
    (tmp_path / "syntax_pylayer_mod.py").write_text("def f(:\n")
    (tmp_path / "dep_pylayer_mod.py").write_text("import no_such_dependency_here\n")
    for module, pattern in [("broken_pylayer_mod", "RuntimeError: boom"),
                            ("syntax_pylayer_mod", "SyntaxError"),
                            ("dep_pylayer_mod", "No module named 'no_such_dependency_here'")]:
        lay = python_layer(module, "X", folder=tmp_path)
        with pytest.raises(GraphError, match=f"module '{module}'.*failed to import.*{pattern}"):
            infer_shapes(lay, [(2, 3)])


def test_user_code_errors_name_the_layer(module_dir):
    folder, module = module_dir
    lay = python_layer(module, "Scale", folder=folder)
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(100, 100)])
    text = str(err.value)
    assert f"{module}.Scale.reshape raised ValueError: too big" in text
    assert "'x' (100, 100)" in text and f"{module}.py:" in text


def test_reshape_that_changes_shape_in_forward(module_dir):
    folder, module = module_dir
    lay = python_layer(module, "Grows", folder=folder)
    infer_shapes(lay, [(2, 3)])
    with pytest.raises(ShapeError, match=r"reshape changed top 'y' from \(\d, 2\) to "
                                         r"\(\d, 2\) during forward"):
        run_layer(lay, [np.zeros((2, 3))])


# ---- inside a net -------------------------------------------------------------------
NET = """
name: "pynet"
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} }} }}
layer {{ name: "label" type: "Input" top: "label"
  input_param {{ shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} }} }}
layer {{ name: "aff" type: "Python" bottom: "data" top: "aff"
  python_param {{ module: "{module}" layer: "Affine" }} {aff_extra} }}
layer {{ name: "scale" type: "Python" bottom: "aff" top: "scaled"
  python_param {{ module: "{module}" layer: "Scale" param_str: "2" }} }}
layer {{ name: "loss" type: "Python" bottom: "scaled" bottom: "label" top: "loss"
  python_param {{ module: "pyloss" layer: "EuclideanLossLayer" }} loss_weight: {weight} }}
"""


def _net(folder, module, weight=1.0, aff_extra="", **kw):
    from netdef.net import Net

    path = folder / "pynet.prototxt"
    path.write_text(NET.format(module=module, weight=weight, aff_extra=aff_extra))
    return Net(str(path), phase="TRAIN", **kw)


def test_module_found_beside_the_prototxt_and_weights_kept(module_dir, tmp_path):
    folder, module = module_dir
    net = _net(folder, module)
    # setup's values survive the net's parameter initialisation
    np.testing.assert_array_equal(net.params["aff"][0].data, [1, 2, 3])
    np.testing.assert_array_equal(net.params["aff"][1].data, [[0.5, 0.5, 0.5]])
    assert net.blobs["loss"].shape == (1,)
    assert [layer.kind for layer in net.layers[2:]] == ["other", "other", "loss"]
    # saved in and loaded from caffemodels
    net.params["aff"][0].data[...] = [7, 8, 9]
    net.save(str(tmp_path / "py.caffemodel"))
    again = _net(folder, module, weights=str(tmp_path / "py.caffemodel"))
    np.testing.assert_array_equal(again.params["aff"][0].data, [7, 8, 9])


def test_forward_backward_and_need_backward_rules(module_dir):
    folder, module = module_dir
    net = _net(folder, module, weight=0.5)
    calls = __import__(module).calls
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((2, 2, 3, 2, 2))
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = t
    calls.clear()
    loss = net.forward_backward(clear=True)
    w = np.arange(1, 4).reshape(1, 3, 1, 1)
    y = (x * w + 0.5) * 2 + pb.TRAIN
    ref_loss, dy, _ = euclidean_loss_reference(y, t)
    assert loss == pytest.approx(0.5 * ref_loss, rel=1e-5)
    # the Scale layer propagates to 'aff' (it has parameters), never to the data
    assert calls.count(("backward", [True])) == 1
    np.testing.assert_allclose(net.params["aff"][0].diff,
                               (0.5 * dy * 2 * x).sum(axis=(0, 2, 3)), rtol=1e-4)
    assert not net.blobs["data"].diff.any()      # no force_backward: the data gets none

    frozen = _net(folder, module, aff_extra="param { lr_mult: 0 } param { lr_mult: 0 }")
    frozen.blobs["data"].data[...] = x
    calls.clear()
    frozen.forward_backward(clear=True)
    assert calls == ["reshape"]       # Scale: nothing needs a gradient, so no backward
    assert not frozen.params["aff"][0].diff.any()


def test_layer_without_backward_runs_forward_only(module_dir):
    from netdef.net import Net

    folder, module = module_dir
    text = (f'layer {{ name: "src" type: "Python" top: "x" python_param {{ module: "{module}" '
            f'layer: "Source" }} }}\n'
            f'layer {{ name: "copy" type: "Python" bottom: "x" top: "y" '
            f'python_param {{ module: "{module}" layer: "NoBackward" }} }}')
    path = folder / "fwd.prototxt"
    path.write_text(text)
    net = Net(str(path))
    assert net.layers[0].kind == "data"
    assert (net.forward()["y"] == 1).all() and (net.forward()["y"] == 2).all()
    net.forward_backward()               # no loss: nothing runs backward, nothing fails
    net.backward(y=np.ones((2, 3)))
    forced = Net(str(path), force_backward=True)
    forced.forward()
    with pytest.raises(NetdefError, match="NoBackward.backward raised NotImplementedError"):
        forced.backward(y=np.ones((2, 3)))   # a gradient asked through it


def test_summary_draw_and_check(module_dir, tmp_path):
    from netdef.check import check
    from netdef.draw import to_dot
    from netdef.summary import summarize

    folder, module = module_dir
    _net(folder, module)
    path = str(folder / "pynet.prototxt")
    s = summarize(path, "TRAIN")
    rows = {layer.name: layer for layer in s.layers}
    assert rows["aff"].top_shapes == [(2, 3, 2, 2)] and rows["loss"].top_shapes == [(1,)]
    assert rows["aff"].params == 6
    dot = to_dot(path, phase="TRAIN")
    assert f"{module}.Affine" in dot and "pyloss.EuclideanLossLayer" in dot

    # a missing module: summary stops with the error, check reports it and goes on
    broken = tmp_path / "broken.prototxt"
    broken.write_text(NET.format(module="no_such_pylayer_module", weight=1, aff_extra="")
                      + 'layer { name: "bad" type: "Convolution" bottom: "label" top: "c" }')
    with pytest.raises(GraphError, match="layer 'aff' \\(Python\\): cannot find Python module "
                                         "'no_such_pylayer_module'"):
        summarize(str(broken), "TRAIN")
    findings = [f.message for f in check(str(broken)) if f.severity == "error"]
    assert any("cannot find Python module 'no_such_pylayer_module'" in m
               and str(tmp_path) in m for m in findings)
    assert any("'bad'" in m for m in findings), findings


# ---- the Euclidean loss written in Python (tests/pyloss.py) ---------------------------
def loss_layer(cls="EuclideanLossLayer", param_str=""):
    return make_layer('layer { name: "loss" type: "Python" bottom: "a" bottom: "b" top: "loss" '
                      f'python_param {{ module: "pyloss" layer: "{cls}" '
                      f'param_str: "{param_str}" }} loss_weight: 1 }}')


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2), (1, 5)])
def test_pyloss_matches_the_reference(shape):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, *shape))
    lay = loss_layer()
    (loss,) = run_layer(lay, [a, b])
    ref, da, db = euclidean_loss_reference(a, b)
    assert loss.shape == (1,) and loss[0] == pytest.approx(ref, rel=1e-5)
    bottoms, tops = wired(lay)
    tops[0].diff[...] = 1.0
    lay.backward(tops, [True, True], bottoms)
    np.testing.assert_allclose(bottoms[0].diff, da, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bottoms[1].diff, db, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls,bottoms", [("EuclideanLossLayer", [0, 1]),
                                         ("EuclideanLossLayer", [0]),
                                         ("ScaledEuclideanLossLayer", [0, 1])])
def test_pyloss_gradient_check_layer_mode(cls, bottoms):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 3, 2, 2))
    lay = loss_layer(cls, param_str="0.7")
    assert check_gradients(lay, [a, b], bottoms, stepsize=1e-2, threshold=1e-2) > 0


LINREG = """
name: "linreg"
layer { name: "x" type: "DummyData" top: "x"
  dummy_data_param { shape { dim: 10 dim: 3 dim: 2 } data_filler { type: "gaussian" } } }
layer { name: "y" type: "DummyData" top: "y"
  dummy_data_param { shape { dim: 10 dim: 3 dim: 2 } data_filler { type: "gaussian" } } }
layer { name: "ipx" type: "InnerProduct" bottom: "x" top: "ipx"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "ipy" type: "InnerProduct" bottom: "y" top: "ipy"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "Python" bottom: "ipx" bottom: "ipy" top: "loss"
  python_param { module: "pyloss" layer: "%s" param_str: "0.8" } loss_weight: 1 }
"""


@pytest.mark.parametrize("cls", ["EuclideanLossLayer", "ScaledEuclideanLossLayer"])
def test_pyloss_gradient_check_net_mode(cls):
    from netdef.net import Net

    net = Net(LINREG % cls, phase="TRAIN", seed=4)
    for name in ("x", "y"):       # fixed data: feed the DummyData tops once
        net.forward()
        net.blobs[name].data[...] = np.array(net.blobs[name].data)
        net.layers[net.layer_names.index(name)].fed = True
    checker = GradientChecker(stepsize=1e-2, threshold=1e-2)
    assert checker.check_net(net, [], max_elements=20) > 0


def test_pyloss_agrees_with_the_builtin_loss():
    from netdef.net import Net

    ours = Net(LINREG % "EuclideanLossLayer", phase="TRAIN", seed=5)
    builtin = Net(LINREG.replace('type: "Python"', 'type: "EuclideanLoss"')
                  .replace('python_param { module: "pyloss" layer: "%s" param_str: "0.8" }', ""),
                  phase="TRAIN", seed=5)
    for a, b in zip(ours.params.values(), builtin.params.values()):
        np.testing.assert_array_equal(a[0].data, b[0].data)
    loss_ours = ours.forward_backward(clear=True)
    loss_builtin = builtin.forward_backward(clear=True)
    assert loss_ours == pytest.approx(loss_builtin, rel=1e-5)
    for name in ("ipx", "ipy"):
        np.testing.assert_allclose(ours.params[name][0].diff, builtin.params[name][0].diff,
                                   rtol=1e-4, atol=1e-6)


SOLVER = """
net: "{net}"
base_lr: 0.05
momentum: 0.9
lr_policy: "fixed"
max_iter: 60
display: 0
random_seed: 7
snapshot_prefix: "{prefix}"
"""


def test_train_with_a_python_loss(tmp_path):
    from netdef.net import Net
    from netdef.train import SGDSolver, get_solver

    net_path = tmp_path / "linreg.prototxt"
    net_path.write_text(LINREG % "ScaledEuclideanLossLayer")
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(SOLVER.format(net=net_path, prefix=tmp_path / "snap"))
    solver = get_solver(str(solver_path), log=lambda line: None)
    assert isinstance(solver, SGDSolver)
    net = solver.net
    first = net.forward_loss()
    scale0 = float(net.params["loss"][0].data[0])
    assert scale0 == pytest.approx(0.8)
    solver.step(60)
    assert net.forward_loss() < 0.2 * first
    assert float(net.params["loss"][0].data[0]) != scale0      # the Python blob learned
    path = tmp_path / "trained.caffemodel"
    net.save(str(path))
    again = Net(str(net_path), weights=str(path), phase="TRAIN")
    np.testing.assert_array_equal(again.params["loss"][0].data, net.params["loss"][0].data)


def test_pycaffe_linreg_example_trains(shared_models, tmp_path):
    """pycaffe's own linreg.prototxt (DummyData + InnerProduct + a Python
    Euclidean loss), with tests/pyloss.py found on sys.path."""
    from netdef.train import get_solver

    net = shared_models / "pycaffe" / "linreg.prototxt"
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(SOLVER.format(net=net, prefix=tmp_path / "snap")
                           .replace("max_iter: 60", "max_iter: 30"))
    solver = get_solver(str(solver_path), log=lambda line: None)
    losses = []
    for _ in range(6):
        solver.step(5)
        losses.append(solver.net.forward_loss())
    assert losses[-1] < 0.5 * losses[0], losses


PYCAFFE_MODULE = '''
import caffe                        # as pycaffe layer modules do
import numpy as np


class Double(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
'''


def test_module_importing_caffe_runs_outside_the_runner(tmp_path):
    """``netdef train`` with a pycaffe layer module: ``import caffe`` gets
    netdef's (no real pycaffe here), for this process."""
    import importlib.util
    import sys

    from netdef.compat import runner

    if importlib.util.find_spec("caffe") is not None:
        pytest.skip("a real pycaffe is installed")
    (tmp_path / "double_pylayer_mod.py").write_text(PYCAFFE_MODULE)
    try:
        lay = python_layer("double_pylayer_mod", "Double", folder=tmp_path)
        (y,) = run_layer(lay, [np.arange(4.0)])
        np.testing.assert_array_equal(y, [0, 2, 4, 6])
        assert isinstance(lay.impl, CaffeLayer)
        assert check_gradients(lay, [np.arange(4.0)]) > 0
    finally:
        runner.uninstall()
        sys.modules.pop("double_pylayer_mod", None)
