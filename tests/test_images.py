"""Image loading, resizing and preprocessing (netdef.images) against hand-computed values."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from netdef.errors import InputError
from netdef.images import (
    DataTransformer,
    Preprocessor,
    center_crop,
    center_crop_offsets,
    fit_mean,
    load_image,
    parse_mean,
    resize_image,
)
from netdef.frontend.schema import pb

RGB = np.array([[[10, 20, 30], [40, 50, 60]],
                [[70, 80, 90], [200, 210, 255]]], dtype=np.uint8)


def _save(tmp_path, name, img) -> str:
    path = tmp_path / name
    img.save(path)
    return str(path)


# ------------------------------------------------------------ loading ----

def test_load_rgb_is_float_hwc_in_unit_range(tmp_path):
    im = load_image(_save(tmp_path, "a.png", Image.fromarray(RGB)))
    assert im.dtype == np.float32 and im.shape == (2, 2, 3)
    np.testing.assert_array_equal(im, (RGB / 255.0).astype(np.float32))


def test_load_gray_is_replicated_for_color_and_kept_for_gray(tmp_path):
    gray = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    path = _save(tmp_path, "g.png", Image.fromarray(gray, "L"))
    color = load_image(path)
    assert color.shape == (2, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(color[:, :, c], gray / np.float32(255))
    single = load_image(path, color=False)
    assert single.shape == (2, 2, 1)
    np.testing.assert_allclose(single[:, :, 0], gray / 255.0, rtol=1e-7)


def test_load_color_as_gray_uses_bt709_weights(tmp_path):
    im = load_image(_save(tmp_path, "a.png", Image.fromarray(RGB)), color=False)
    expected = (RGB / 255.0) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(im[:, :, 0], expected, rtol=1e-6)


def test_load_rgba_drops_alpha_without_compositing(tmp_path):
    rgba = np.dstack([RGB, np.array([[0, 128], [255, 7]], np.uint8)])
    im = load_image(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(im, (RGB / 255.0).astype(np.float32))


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_load_16_bit_gray_is_scaled_by_65535(tmp_path, ext):
    raw = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path, f"deep.{ext}", Image.fromarray(raw))
    im = load_image(path, color=False)
    np.testing.assert_allclose(im[:, :, 0], raw / 65535.0, rtol=1e-6)
    assert load_image(path).shape == (2, 2, 3)


def test_load_32_bit_int_mode_is_read_as_16_bit(tmp_path):
    raw = np.array([[0, 65535], [70000, 6553]], dtype=np.int32)  # Pillow mode "I"
    im = load_image(_save(tmp_path, "i.tif", Image.fromarray(raw)), color=False)
    np.testing.assert_allclose(im[:, :, 0], [[0, 1], [1, 6553 / 65535]], rtol=1e-6)


def test_load_palette_gives_the_palette_colors(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 1])
    im = load_image(_save(tmp_path, "p.png", img))
    np.testing.assert_array_equal(im[0], [[1, 0, 0], [0, 0, 1]])
    img.info["transparency"] = 0           # a transparent palette entry keeps its color
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        im = load_image(_save(tmp_path, "pt.png", img))
    np.testing.assert_array_equal(im[0], [[1, 0, 0], [0, 0, 1]])


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.jpg: not an image"):
        load_image(bad)
    with pytest.raises(InputError, match="missing.png: image file not found"):
        load_image(tmp_path / "missing.png")
    truncated = tmp_path / "cut.png"
    full = (tmp_path / "full.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9).save(full)
    truncated.write_bytes(full.read_bytes()[:60])
    with pytest.raises(InputError, match="cut.png"):
        load_image(truncated)


# ----------------------------------------------------------- resizing ----

def test_resize_by_hand_half_pixel_centers_and_clamped_edges():
    row = np.array([[0.0, 1.0]])
    # Upsampling 2 -> 4 samples x = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1].
    np.testing.assert_allclose(resize_image(row, (1, 4))[0], [0, 0.25, 0.75, 1])
    # Downsampling 4 -> 2 samples x = 0.5, 2.5: means of neighbours.
    np.testing.assert_allclose(resize_image(np.array([[0.0, 2, 4, 8]]), (1, 2))[0], [1, 6])


def test_resize_same_size_is_identity_and_keeps_channels():
    im = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(resize_image(im, (5, 7)), im)
    assert resize_image(im, (3, 4)).shape == (3, 4, 3)
    assert resize_image(im[:, :, 0], (3, 4)).shape == (3, 4)
    with pytest.raises(InputError):
        resize_image(im, (0, 4))


@pytest.mark.parametrize("size", [(3, 5), (9, 4), (16, 16), (227, 180)])
def test_resize_matches_opencv_float_bilinear(size):
    cv2 = pytest.importorskip("cv2")
    im = np.random.default_rng(1).random((37, 29, 3)).astype(np.float32)
    expected = cv2.resize(im, size[::-1], interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(resize_image(im, size), expected, atol=1e-6)


@pytest.mark.parametrize("big,crop", [(256, 227), (255, 227), (5, 2), (4, 3), (7, 7)])
def test_center_crop_offsets_equal_pycaffe_classifier(big, crop):
    center = big / 2.0
    pycaffe = int(center - crop / 2.0)  # Classifier: (center - crop/2).astype(int)
    assert center_crop_offsets((big, big), (crop, crop)) == (pycaffe, pycaffe)


# -------------------------------------------------------------- means ----

def test_fit_mean_rules():
    m = np.arange(3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6)
    same, rule = fit_mean(m[:, :4, :4], (3, 4, 4))
    assert rule == "mean image 4x4" and same.shape == (3, 4, 4)
    cropped, rule = fit_mean(m, (3, 4, 4))
    assert "center-cropped to 4x4" in rule
    np.testing.assert_array_equal(cropped, m[:, 1:5, 1:5])
    avg, rule = fit_mean(m[:, :2, :2], (3, 4, 4))
    assert "per-channel average" in rule
    np.testing.assert_allclose(avg.ravel(), m[:, :2, :2].mean(axis=(1, 2)))
    values, _ = fit_mean([7.0], (3, 4, 4))
    np.testing.assert_array_equal(values.ravel(), [7, 7, 7])
    with pytest.raises(InputError, match="2 values"):
        fit_mean([1.0, 2.0], (3, 4, 4))
    with pytest.raises(InputError, match="3 channels"):
        fit_mean(np.zeros((1, 4, 4)), (3, 4, 4))


def test_parse_mean_values_npy_and_binaryproto(tmp_path):
    values, source = parse_mean("104, 117,123", 3)
    np.testing.assert_array_equal(values, [104, 117, 123])
    assert source is None
    np.testing.assert_array_equal(parse_mean("128", 3)[0], [128, 128, 128])
    with pytest.raises(InputError, match="2 values"):
        parse_mean("1,2", 3)
    mean = np.random.default_rng(2).random((3, 5, 5)).astype(np.float32) * 255
    np.save(tmp_path / "m.npy", mean)
    np.testing.assert_array_equal(parse_mean(str(tmp_path / "m.npy"), 3)[0], mean)
    from netdef.io.binaryproto import write_binaryproto

    write_binaryproto(tmp_path / "m.binaryproto", mean)
    arr, source = parse_mean(str(tmp_path / "m.binaryproto"), 3)
    np.testing.assert_array_equal(arr, mean)
    assert source.endswith("m.binaryproto")
    with pytest.raises(InputError, match="nope.npy"):
        parse_mean(str(tmp_path / "nope.npy"), 3)


# ------------------------------------------------------- Preprocessor ----

def test_preprocessor_by_hand_bgr_scale_mean_input_scale():
    im = RGB / np.float32(255)
    prep = Preprocessor((3, 2, 2), mean=np.array([100, 110, 120]), input_scale=0.5)
    out = prep(im)
    assert out.dtype == np.float32 and out.shape == (3, 2, 2)
    for c, (src, m) in enumerate(zip((2, 1, 0), (100, 110, 120), strict=True)):
        np.testing.assert_allclose(out[c], (RGB[:, :, src].astype(np.float64) - m) * 0.5,
                                   atol=1e-4)


def test_preprocessor_resize_then_center_crop_then_mean_image():
    big = np.random.default_rng(3).random((4, 4, 3)).astype(np.float32)
    mean = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    prep = Preprocessor((3, 2, 2), resize=(4, 4), mean=mean, channel_swap=None, raw_scale=1.0)
    out = prep(big)
    expected = big[1:3, 1:3].transpose(2, 0, 1) - mean[:, 1:3, 1:3]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    d = prep.describe()
    assert d["crop"] == [2, 2] and d["resize"] == [4, 4] and d["channel_order"] == "RGB"
    assert "center-cropped" in d["mean"]["rule"]


def test_preprocessor_gray_net_and_describe():
    prep = Preprocessor((1, 3, 3), mean=[0.5], raw_scale=None)
    assert not prep.color and prep.channel_swap is None
    out = prep(np.ones((6, 6, 1), np.float32))
    np.testing.assert_allclose(out, 0.5)
    d = prep.describe()
    assert d["channel_order"] == "gray" and d["mean"]["values"] == [0.5] and d["crop"] is None
    assert "input 1x3x3" in prep.summary()


def test_preprocessor_rejects_bad_settings():
    with pytest.raises(InputError, match="channel swap"):
        Preprocessor((3, 2, 2), channel_swap=(0, 1))
    with pytest.raises(InputError, match="smaller than"):
        Preprocessor((3, 8, 8), resize=(4, 4))
    with pytest.raises(InputError, match="channels"):
        Preprocessor((3, 2, 2))(np.zeros((2, 2, 2)))


def test_preprocessor_batch_stacks():
    prep = Preprocessor((3, 4, 4))
    ims = [np.zeros((5, 6, 3), np.float32), np.ones((3, 3, 1), np.float32)]
    out = prep.batch(ims)
    assert out.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(out[1], 255)


# ---------------------------------------------------- DataTransformer ----

def _param(**fields) -> pb.TransformationParameter:
    p = pb.TransformationParameter()
    for k, v in fields.items():
        if k == "mean_value":
            p.mean_value.extend(v)
        else:
            setattr(p, k, v)
    return p


ITEM = np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6)


def test_transformer_test_phase_center_crop_mean_value_scale():
    t = DataTransformer(_param(crop_size=3, mean_value=[1.0, 2.0], scale=0.5), "TEST")
    out = t(ITEM)
    expected = (ITEM[:, 1:4, 1:4].astype(np.float32) - np.array([1, 2]).reshape(2, 1, 1)) * 0.5
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32 and t.output_shape((7, 2, 5, 6)) == (7, 2, 3, 3)


def test_transformer_mean_file_is_cropped_with_the_data(tmp_path):
    from netdef.io.binaryproto import write_binaryproto

    mean = np.random.default_rng(4).random((2, 5, 6)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean)
    t = DataTransformer(_param(crop_size=3, mean_file=str(tmp_path / "mean.binaryproto")))
    np.testing.assert_allclose(t(ITEM), ITEM[:, 1:4, 1:4] - mean[:, 1:4, 1:4], rtol=1e-6)
    with pytest.raises(InputError, match="mean.binaryproto"):
        t(np.zeros((2, 4, 4), np.uint8))


def test_transformer_train_random_crop_and_mirror_are_seeded():
    p = _param(crop_size=3, mirror=True)
    a = DataTransformer(p, "TRAIN", np.random.default_rng(7)).transform_batch([ITEM] * 40)
    b = DataTransformer(p, "TRAIN", np.random.default_rng(7)).transform_batch([ITEM] * 40)
    np.testing.assert_array_equal(a, b)
    windows = {}
    for y in range(3):
        for x in range(4):
            win = ITEM[:, y:y + 3, x:x + 3].astype(np.float32)
            windows[(y, x, False)] = win
            windows[(y, x, True)] = win[:, :, ::-1]
    seen = set()
    for out in a:
        match = [k for k, w in windows.items() if np.array_equal(out, w)]
        assert len(match) == 1
        seen.add(match[0])
    assert {m for *_, m in seen} == {False, True}          # both mirror states occur
    assert len({(y, x) for y, x, _ in seen}) > 4            # offsets vary


def test_transformer_test_phase_mirror_flips_like_caffe():
    # Caffe flips a coin for mirror: true in every phase; crops stay centered in TEST.
    out = DataTransformer(_param(mirror=True), "TEST", np.random.default_rng(0)) \
        .transform_batch([ITEM] * 30)
    flipped = [np.array_equal(o, ITEM[:, :, ::-1]) for o in out]
    assert any(flipped) and not all(flipped)


def test_transformer_user_errors():
    with pytest.raises(InputError, match="both mean_file and mean_value"):
        DataTransformer(_param(mean_file="m.binaryproto", mean_value=[1.0]))
    with pytest.raises(InputError, match="3 mean_value entries for 2 channels"):
        DataTransformer(_param(mean_value=[1.0, 2.0, 3.0]))(ITEM)
    with pytest.raises(InputError, match="larger than"):
        DataTransformer(_param(crop_size=9))(ITEM)


# --------------------------------------------------- real images ----

@pytest.mark.parametrize("name", ["cat.jpg", "cat_gray.jpg", "fish-bike.jpg"])
def test_shared_images_with_the_ilsvrc_mean(shared_models, name):
    cv2 = pytest.importorskip("cv2")
    mean = parse_mean(str(shared_models / "imagenet_mean" / "ilsvrc_2012_mean.npy"), 3)[0]
    im = load_image(shared_models / "images" / name)
    assert im.shape[2] == 3 and 0 <= im.min() and im.max() <= 1
    prep = Preprocessor((3, 227, 227), resize=(256, 256), mean=mean)
    out = prep(im)
    # Independent pipeline: OpenCV's bilinear resize, crop, BGR, x255, cropped mean.
    resized = cv2.resize(im, (256, 256), interpolation=cv2.INTER_LINEAR)
    expected = center_crop(resized, (227, 227))[:, :, ::-1].transpose(2, 0, 1) * 255
    expected = expected - center_crop(mean, (227, 227), axes=(1, 2))
    np.testing.assert_allclose(out, expected, atol=2e-4)
    if name == "cat_gray.jpg":   # equal channels before the mean
        cm = center_crop(mean, (227, 227), axes=(1, 2))
        np.testing.assert_allclose(out[0] + cm[0], out[2] + cm[2], atol=1e-4)
