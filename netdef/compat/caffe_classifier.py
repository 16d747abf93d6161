"""``caffe.Classifier``: resize, (over)sample, preprocess, forward -- pycaffe's.

A full mean image (the 3 x 256 x 256 ImageNet mean with a 227 x 227 input,
as pycaffe's ``classify.py`` passes it) is resized to the input by
``caffe.io.Transformer.set_mean`` instead of being refused.
"""
from __future__ import annotations

import numpy as np

from netdef.compat import caffe_io as io
from netdef.compat.caffe import TEST, Net


def input_transformer(net, mean, input_scale, raw_scale, channel_swap) -> io.Transformer:
    """The Transformer of pycaffe's Classifier and Detector for the net's
    first input: HWC -> CHW, then whichever of mean, scales and channel
    swap were given."""
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net._net.blobs[in_].shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None,
    input_scale=None, raw_scale=None, channel_swap=None)``."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        shape = self._net.blobs[in_].shape
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """Class scores per image: the mean over 10 crops, or the center crop."""
        resized = np.stack([io.resize_image(im, self.image_dims) for im in inputs])
        if oversample:
            crops = io.oversample(resized, self.crop_dims)
        else:
            from netdef.images import center_crop

            crops = np.stack([center_crop(im, self.crop_dims) for im in resized])
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        scores = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            scores = scores.reshape(len(scores) // 10, 10, -1).mean(axis=1)
        return scores
