"""``caffe.Detector``: classify windows of images (R-CNN style), pycaffe's.

``detect_windows([(image_file, windows), ...])`` crops every window
(ymin, xmin, ymax, xmax), warps it to the input size, preprocesses it and
returns one ``{"window", "prediction", "filename"}`` per window. With
``context_pad=p`` each window is enlarged so that, once warped, ``p``
pixels of surrounding context border it, as in Caffe's R-CNN; what falls
outside the image is filled with the mean (in unprocessed input space).
pycaffe's context path indexes arrays with floats and fails under Python 3;
here the same box arithmetic runs with integer indices.
"""
from __future__ import annotations

import numpy as np

from netdef.compat import caffe_io as io
from netdef.compat.caffe import TEST, Net
from netdef.compat.caffe_classifier import input_transformer
from netdef.compat.errors import CompatValueError


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None, context_pad=None)``."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        super().__init__(model_file, pretrained_file, TEST)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows) -> list[dict]:
        """Predictions for every window of every image."""
        crops = []
        for filename, windows in images_windows:
            image = io.load_image(filename).astype(np.float32)
            crops += [self.crop(image, window) for window in windows]
        if not crops:
            return []
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections, i = [], 0
        for filename, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[i],
                                   "filename": filename})
                i += 1
        return detections

    def detect_selective_search(self, image_fnames) -> list[dict]:
        """Windows from selective search (needs pycaffe's external
        ``selective_search_ijcv_with_python`` module and MATLAB)."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise CompatValueError("detect_selective_search needs the module "
                                   "'selective_search_ijcv_with_python' (and MATLAB)",
                                   hint="compute windows yourself and call detect_windows") \
                from None
        image_fnames = [str(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im, window) -> np.ndarray:
        """The window of ``im`` (H x W x K), with context padding when configured."""
        window = np.asarray(window)
        y0, x0, y1, x1 = (int(v) for v in window[:4])
        if not self.context_pad:
            return im[y0:y1, x0:x1]
        crop_size = self._net.blobs[self.inputs[0]].shape[3]       # assumes square
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        center = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = int(np.round(max(0, -box[0]) * scale_h))        # how much falls outside
        pad_x = int(np.round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1   # Caffe's +1
        crop_h = min(int(np.round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(np.round(clip_w * scale_w)), crop_size - pad_x)
        b = box.astype(int)
        if b[2] <= b[0] or b[3] <= b[1] or crop_h < 1 or crop_w < 1:
            raise CompatValueError(f"window {tuple(window.tolist())} lies outside the image "
                                   f"({im_h} x {im_w})")
        context = io.resize_image(im[b[0]:b[2], b[1]:b[3]], (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad) -> None:
        """Crop size from the input (H x W x K) and, for context padding, the
        mean in unprocessed input space (the fill outside the image)."""
        in_ = self.inputs[0]
        inverse = np.argsort(self.transformer.transpose[in_])
        self.crop_dims = np.array(self._net.blobs[in_].shape[1:])[inverse]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float32).transpose(inverse)
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            crop_mean = crop_mean[:, :, np.argsort(swap)]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean
