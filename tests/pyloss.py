"""A Euclidean loss written as a pycaffe Python layer (pycaffe's classic
example, written here), for the tests: ``python_param { module: "pyloss"
layer: "EuclideanLossLayer" }`` with ``loss_weight: 1`` on its top.

    loss = sum((bottom0 - bottom1)^2) / (2 * num)

Unlike the pycaffe example, backward scales by the top's diff, which holds
the loss weight (as Caffe's own EuclideanLoss does), so ``loss_weight: 0.5``
works. It also declares one parameter blob in ``ScaledEuclideanLossLayer``
(a learnable scale on the difference) to exercise ``self.blobs``.

Under pycaffe or ``netdef pycaffe``, ``import caffe`` gives ``caffe.Layer``;
run directly (pytest), the class comes from netdef.compat.caffe_layer.
"""
import numpy as np

try:
    import caffe
    Layer = caffe.Layer
except (ImportError, AttributeError):
    from netdef.compat.caffe_layer import Layer


class EuclideanLossLayer(Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data.reshape(bottom[0].data.shape)
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            alpha = sign * top[0].diff[0] / bottom[i].num
            bottom[i].diff[...] = alpha * self.diff.reshape(bottom[i].data.shape)


class ScaledEuclideanLossLayer(Layer):
    """loss = sum((s * (b0 - b1))^2) / (2 num), with a learnable scalar s
    (initialised from param_str, default 1)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str or 1.0)

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        s = self.blobs[0].data[0]
        top[0].data[...] = np.sum((s * self.diff) ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        s = self.blobs[0].data[0]
        w = top[0].diff[0] / bottom[0].num
        for i in range(2):
            if propagate_down[i]:
                sign = 1 if i == 0 else -1
                bottom[i].diff[...] = sign * w * s * s * self.diff
        # parameter diffs accumulate (Caffe's rule; the solver clears them)
        self.blobs[0].diff[...] += w * s * np.sum(self.diff ** 2)
