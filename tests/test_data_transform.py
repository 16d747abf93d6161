"""netdef.data.transform.DataTransformer against the loop reference
(tests/reference.py transform_reference), TRAIN and TEST, every option."""
from __future__ import annotations

import numpy as np
import pytest
from reference import transform_reference

from netdef.data.transform import DataTransformer
from netdef.errors import InputError
from netdef.frontend.schema import pb
from netdef.io.binaryproto import write_binaryproto


def param(**fields) -> pb.TransformationParameter:
    p = pb.TransformationParameter()
    for k, v in fields.items():
        if k == "mean_value":
            p.mean_value.extend(v)
        else:
            setattr(p, k, v)
    return p


ITEMS = [np.random.default_rng(i).integers(0, 256, (3, 7, 9), dtype=np.uint8) for i in range(6)]
MEAN = np.random.default_rng(99).uniform(0, 255, (3, 7, 9)).astype(np.float32)


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("crop", [0, 4, 7])
@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("mean", ["none", "file", "one", "per-channel"])
@pytest.mark.parametrize("scale", [1.0, 0.00390625])
def test_transform_matches_reference(tmp_path, phase, crop, mirror, mean, scale):
    fields = dict(crop_size=crop, mirror=mirror, scale=scale)
    ref_mean = None
    if mean == "file":
        write_binaryproto(tmp_path / "m.binaryproto", MEAN)
        fields["mean_file"] = str(tmp_path / "m.binaryproto")
        ref_mean = MEAN
    elif mean == "one":
        fields["mean_value"] = [100.5]
        ref_mean = np.array([100.5], np.float32)
    elif mean == "per-channel":
        fields["mean_value"] = [104.0, 117.0, 123.0]
        ref_mean = np.array([104.0, 117.0, 123.0], np.float32)
    t = DataTransformer(param(**fields), phase)
    got = t.transform_batch(ITEMS, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    expected = np.stack([transform_reference(x, rng, train=phase == "TRAIN", crop=crop,
                                             mirror=mirror, mean=ref_mean, scale=scale)
                         for x in ITEMS])
    assert got.dtype == np.float32 and got.shape == (6, 3, crop or 7, crop or 9)
    np.testing.assert_array_equal(got, expected)


def test_float_items_and_out_argument():
    items = [np.random.default_rng(i).standard_normal((2, 5, 5)).astype(np.float32)
             for i in range(3)]
    t = DataTransformer(param(crop_size=3, scale=2.0, mean_value=[0.5]), "TEST")
    out = np.full((3, 2, 3, 3), np.nan, np.float32)
    assert t.transform_batch(items, out=out) is out
    np.testing.assert_array_equal(out, [(x[:, 1:4, 1:4] - np.float32(0.5)) * 2 for x in items])


def test_train_crops_vary_test_crops_are_centred():
    item = np.arange(3 * 10 * 10, dtype=np.uint8).reshape(3, 10, 10)
    train = DataTransformer(param(crop_size=4), "TRAIN").transform_batch([item] * 30)
    assert len({a.tobytes() for a in train}) > 5
    test = DataTransformer(param(crop_size=4), "TEST").transform_batch([item] * 5)
    np.testing.assert_array_equal(test, [item[:, 3:7, 3:7]] * 5)


def test_mirror_flips_in_both_phases_like_caffe():
    item = ITEMS[0]
    for phase in ("TRAIN", "TEST"):
        out = DataTransformer(param(mirror=True), phase).transform_batch([item] * 40)
        flipped = [np.array_equal(o, item[:, :, ::-1]) for o in out]
        same = [np.array_equal(o, item) for o in out]
        assert any(flipped) and any(same) and all(f or s for f, s in zip(flipped, same))


def test_output_shape_and_color():
    t = DataTransformer(param(crop_size=5, force_gray=True))
    assert t.output_shape((3, 9, 9)) == (3, 5, 5) and t.output_shape((2, 1, 8, 8)) == (2, 1, 5, 5)
    assert t.color is False
    assert DataTransformer(param(force_color=True)).color is True
    assert DataTransformer(param()).color is None


def test_mean_file_read_lazily_and_relative_to_the_search_path(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    write_binaryproto(tmp_path / "sub" / "mean.binaryproto", MEAN)
    monkeypatch.chdir(tmp_path)
    t = DataTransformer(param(mean_file="mean.binaryproto"), search_path=str(tmp_path / "sub"))
    np.testing.assert_allclose(t(ITEMS[0]), ITEMS[0] - MEAN, rtol=1e-6)
    missing = DataTransformer(param(mean_file="nowhere.binaryproto"), who="layer 'd' (Data)")
    with pytest.raises(InputError, match=r"layer 'd' \(Data\): mean_file: cannot read the mean "
                                         "file"):
        missing(ITEMS[0])


def test_transformer_errors():
    with pytest.raises(InputError, match="both mean_file and mean_value"):
        DataTransformer(param(mean_file="m.binaryproto", mean_value=[1.0]))
    with pytest.raises(InputError, match="both force_color and force_gray"):
        DataTransformer(param(force_color=True, force_gray=True))
    with pytest.raises(InputError, match="2 mean_value entries for 3 channels"):
        DataTransformer(param(mean_value=[1.0, 2.0]))(ITEMS[0])
    with pytest.raises(InputError, match="crop_size 8 is larger than the data item 7x9"):
        DataTransformer(param(crop_size=8))(ITEMS[0])
    with pytest.raises(InputError, match="item 1 has shape"):
        DataTransformer(param()).transform_batch([ITEMS[0], ITEMS[0][:, :5]])
