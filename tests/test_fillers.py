"""Fillers: exact values where Caffe's are deterministic, statistics otherwise."""
from __future__ import annotations

import math

import numpy as np
import pytest

from netdef.errors import NetdefError
from netdef.fillers import KNOWN_FILLERS, fill, make_rng
from netdef.frontend.schema import pb

FAN_IN, FAN_OUT, AVERAGE = (pb.FillerParameter.FAN_IN, pb.FillerParameter.FAN_OUT,
                            pb.FillerParameter.AVERAGE)


def filler(**kwargs) -> pb.FillerParameter:
    return pb.FillerParameter(**kwargs)


def test_none_and_default_filler_are_zero():
    rng = make_rng(0)
    for spec in (None, filler()):
        out = fill((3, 4), spec, rng)
        assert out.dtype == np.float32 and out.shape == (3, 4) and not out.any()


def test_constant():
    out = fill((2, 3, 4), filler(type="constant", value=0.1), make_rng(0))
    assert out.dtype == np.float32
    assert (out == np.float32(0.1)).all()


def test_uniform_range_and_moments():
    out = fill((200, 500), filler(type="uniform", min=-2.0, max=3.0), make_rng(1))
    assert out.dtype == np.float32
    assert out.min() >= -2.0 and out.max() <= 3.0
    assert abs(out.mean() - 0.5) < 0.02
    assert abs(out.var() - 25 / 12) < 0.03


def test_gaussian_moments():
    out = fill((400, 500), filler(type="gaussian", mean=1.0, std=0.5), make_rng(2))
    assert abs(out.mean() - 1.0) < 0.005
    assert abs(out.std() - 0.5) < 0.005


def test_sparse_gaussian_keeps_sparse_over_num_outputs():
    # shape[0] = 100 outputs, sparse = 15 -> each weight kept with p = 0.15.
    out = fill((100, 2000), filler(type="gaussian", std=1.0, sparse=15), make_rng(3))
    assert abs(np.count_nonzero(out) / out.size - 0.15) < 0.005
    kept = out[out != 0]
    assert abs(kept.std() - 1.0) < 0.02
    none = fill((10, 10), filler(type="gaussian", sparse=0), make_rng(3))
    assert not none.any()
    full = fill((10, 10), filler(type="gaussian", sparse=10), make_rng(3))
    assert np.count_nonzero(full) == 100


def test_fan_definitions_conv_and_fc():
    """Caffe: fan_in = count / shape[0], fan_out = count / shape[1]."""
    from netdef.fillers import _fans

    assert _fans((64, 32, 3, 3), 64 * 32 * 9) == (288, 576)
    assert _fans((10, 20), 200) == (20, 10)
    assert _fans((7,), 7) == (1, 7)


@pytest.mark.parametrize("norm, n", [(FAN_IN, 32 * 9), (FAN_OUT, 64 * 9),
                                     (AVERAGE, (32 * 9 + 64 * 9) / 2)])
def test_xavier_uniform_bound_and_variance(norm, n):
    out = fill((64, 32, 3, 3), filler(type="xavier", variance_norm=norm), make_rng(4))
    scale = math.sqrt(3.0 / n)
    assert np.abs(out).max() <= scale * (1 + 1e-6)
    assert np.abs(out).max() > 0.99 * scale          # really uniform on [-scale, scale]
    assert abs(out.var() * n - 1.0) < 0.02            # var = scale^2 / 3 = 1 / n
    assert abs(out.mean()) < 0.01 * scale


@pytest.mark.parametrize("norm, n", [(FAN_IN, 40), (FAN_OUT, 300), (AVERAGE, 170)])
def test_msra_std_by_fan_on_inner_product(norm, n):
    out = fill((300, 40), filler(type="msra", variance_norm=norm), make_rng(5))
    assert abs(out.std() / math.sqrt(2.0 / n) - 1.0) < 0.02
    assert abs(out.mean()) < 0.01


def test_positive_unitball_rows_sum_to_one():
    out = fill((6, 3, 4, 5), filler(type="positive_unitball"), make_rng(6))
    assert (out >= 0).all() and (out <= 1).all()
    np.testing.assert_allclose(out.reshape(6, -1).sum(axis=1), 1.0, rtol=1e-5)


def test_bilinear_factor_2_kernel_4():
    out = fill((2, 1, 4, 4), filler(type="bilinear"), make_rng(0))
    t = np.float32([0.25, 0.75, 0.75, 0.25])
    for o in range(2):
        np.testing.assert_allclose(out[o, 0], np.outer(t, t), rtol=1e-6)


def test_bilinear_factor_3_kernel_5():
    # f = ceil(5 / 2) = 3, c = (2f - 1 - f % 2) / 2f = 4/6: taps 1/3, 2/3, 1, 2/3, 1/3.
    out = fill((1, 2, 5, 5), filler(type="bilinear"), make_rng(0))
    t = np.float32([1, 2, 3, 2, 1]) / 3
    np.testing.assert_allclose(out[0, 1], np.outer(t, t), rtol=1e-6)
    # Partition of unity: with stride 3 each output pixel sees one tap of every
    # phase, and each phase sums to 1, so a constant map upsamples to itself.
    kernel = out[0, 0].astype(np.float64)
    for py in range(3):
        for px in range(3):
            assert math.isclose(kernel[py::3, px::3].sum(), 1.0, rel_tol=1e-6)


def test_bilinear_rejects_bad_shapes():
    with pytest.raises(NetdefError, match="square"):
        fill((1, 1, 3, 4), filler(type="bilinear"), make_rng(0), where="layer 'up'")
    with pytest.raises(NetdefError, match="4-D"):
        fill((3, 3), filler(type="bilinear"), make_rng(0))


def test_same_seed_same_weights_every_time():
    spec = filler(type="xavier")
    a = fill((8, 4, 3, 3), spec, make_rng(42))
    b = fill((8, 4, 3, 3), spec, make_rng(42))
    c = fill((8, 4, 3, 3), spec, make_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # A fixed value guards against the stream silently changing between runs.
    rng = make_rng(7)
    first = fill((3,), filler(type="uniform"), rng)
    np.testing.assert_array_equal(first, fill((3,), filler(type="uniform"), make_rng(7)))
    assert fill((4,), filler(type="gaussian"), make_rng(None)).shape == (4,)
    assert fill((4,), filler(type="gaussian"), make_rng(-1)).shape == (4,)


def test_every_filler_returns_float32_of_the_shape():
    for kind in KNOWN_FILLERS:
        out = fill((2, 2, 3, 3), filler(type=kind), make_rng(0))
        assert out.dtype == np.float32 and out.shape == (2, 2, 3, 3), kind
        assert out.flags.c_contiguous and out.flags.writeable


def test_unknown_filler_lists_known_types():
    with pytest.raises(NetdefError) as err:
        fill((2,), filler(type="gausian"), make_rng(0), where="layer 'conv1' (Convolution)")
    msg = str(err.value)
    assert msg.startswith("layer 'conv1' (Convolution): unknown filler type 'gausian'")
    assert "did you mean 'gaussian'" in msg
    for kind in KNOWN_FILLERS:
        assert kind in msg


def test_invalid_parameters():
    rng = make_rng(0)
    with pytest.raises(NetdefError, match="does not support 'sparse'"):
        fill((2, 2), filler(type="xavier", sparse=1), rng)
    with pytest.raises(NetdefError, match="std must be > 0"):
        fill((2, 2), filler(type="gaussian", std=0), rng)
    with pytest.raises(NetdefError, match="min 1.0 > max 0.0"):
        fill((2, 2), filler(type="uniform", min=1, max=0), rng)
    with pytest.raises(NetdefError, match="exceeds the 2 outputs"):
        fill((2, 2), filler(type="gaussian", sparse=3), rng)
