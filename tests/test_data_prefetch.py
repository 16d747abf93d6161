"""Prefetching: the thread gives the batches synchronous reading gives,
hands its errors to forward, and stops when asked (or with its layer)."""
from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
from data_helpers import forward_batches, layer_text, random_items, raw_lmdb, write_lmdb
from layer_harness import infer_shapes, make_layer, wired

from netdef.data.prefetch import Prefetcher
from netdef.data.records import datum_from_array
from netdef.errors import DataError


def counting(limit=None, fail_at=None, made=None):
    def make():
        i = 0
        while limit is None or i < limit:
            if made is not None:
                made.append(i)
            if i == fail_at:
                raise DataError(f"record 'k{i}' is corrupt", key=f"k{i}")
            yield i
            i += 1
    return make


def test_prefetcher_order_depth_and_lazy_start():
    made: list[int] = []
    p = Prefetcher(counting(made=made), depth=2)
    assert not p.running and made == []          # nothing happens before the first next
    assert [p.next() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert p.running and p._thread.daemon
    time.sleep(0.2)
    assert len(made) <= 5 + 2 + 1                # at most depth ahead (+ the one being put)
    p.close()
    assert not p.running
    p.close()                                     # idempotent


def test_prefetcher_hands_errors_to_the_consumer():
    p = Prefetcher(counting(fail_at=3), depth=2)
    assert [p.next() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(DataError, match="record 'k3' is corrupt") as err:
        p.next()
    assert err.value.key == "k3"
    with pytest.raises(DataError, match="record 'k3'"):     # the stream stays broken
        p.next()
    p.close()
    ended = Prefetcher(counting(limit=1), depth=1)
    assert ended.next() == 0
    with pytest.raises(RuntimeError, match="the data stream ended"):
        ended.next()
    ended.close()


def test_prefetcher_depth_zero_is_synchronous():
    p = Prefetcher(counting(fail_at=2), depth=0)
    before = threading.active_count()
    assert [p.next(), p.next()] == [0, 1]
    assert threading.active_count() == before and not p.running
    with pytest.raises(DataError, match="k2"):
        p.next()
    with pytest.raises(DataError, match="k2"):
        p.next()


def test_close_wakes_a_producer_blocked_on_a_full_queue():
    p = Prefetcher(counting(), depth=1)
    p.next()
    time.sleep(0.1)                               # the queue is full, the producer waits
    t = time.perf_counter()
    p.close()
    assert not p.running and time.perf_counter() - t < 2


def lmdb_layer(tmp_path, phase="TRAIN", batch=3, name="data"):
    db = tmp_path / "db"
    if not db.exists():
        raw_lmdb(db, random_items(10, (2, 9, 9), seed=1))
    params = (f"data_param {{ source: '{db}' batch_size: {batch} backend: LMDB }} "
              "transform_param { crop_size: 5 mirror: true scale: 0.5 mean_value: 3 }")
    lay = make_layer(layer_text("Data", params, name=name), phase)
    infer_shapes(lay, [])
    return lay


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_prefetched_batches_equal_synchronous_ones(tmp_path, monkeypatch, phase):
    threaded = lmdb_layer(tmp_path, phase)
    threaded.reseed(11)
    got = forward_batches(threaded, 8)
    assert threaded._stream.running
    threaded.close()
    monkeypatch.setenv("NETDEF_NO_PREFETCH", "1")
    plain = lmdb_layer(tmp_path, phase)
    plain.reseed(11)
    assert plain.prefetch_depth == 0
    for (a, la), (b, lb) in zip(got, forward_batches(plain, 8)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_reseed_and_seek_while_the_thread_runs(tmp_path):
    lay = lmdb_layer(tmp_path)
    first = forward_batches(lay, 4)
    lay.reseed(0)                                 # the running stream is dropped
    again = forward_batches(lay, 4)
    lay.seek(2)
    tail = forward_batches(lay, 2)
    for (a, _), (b, _) in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for (a, _), (b, _) in zip(first[2:], tail):
        np.testing.assert_array_equal(a, b)
    lay.close()


def test_thread_error_surfaces_on_the_next_forward(tmp_path):
    good = [datum_from_array(np.zeros((1, 2, 2), np.uint8)).SerializeToString()] * 4
    write_lmdb(tmp_path / "db", [("a0", good[0]), ("a1", good[1]), ("a2", b"\x0a\xff"),
                                 ("a3", good[3])])
    lay = make_layer(layer_text("Data", f"data_param {{ source: '{tmp_path / 'db'}' "
                                        "batch_size: 1 backend: LMDB }", name="train"))
    infer_shapes(lay, [])
    bottoms, tops = wired(lay)
    lay.forward(bottoms, tops)
    lay.forward(bottoms, tops)
    with pytest.raises(DataError, match=r"layer 'train' \(Data\): LMDB '.*': record 'a2' is "
                                        r"corrupt") as err:
        lay.forward(bottoms, tops)
    assert err.value.key == "a2"
    assert lay.position == 2                      # the failed batch was not delivered
    lay.close()


def test_layer_close_and_garbage_collection_stop_the_thread(tmp_path):
    lay = lmdb_layer(tmp_path, name="gc_me")
    forward_batches(lay, 1)
    thread = lay._stream._thread
    assert thread.is_alive() and thread.daemon and thread.name == "netdef-data-gc_me"
    lay.close()
    assert not thread.is_alive()
    forward_batches(lay, 1)                       # a later forward starts it again
    thread = lay._stream._thread
    assert thread.is_alive()
    del lay
    from layer_harness import _WIRING  # the harness keeps layers weakly

    assert _WIRING is not None
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()
