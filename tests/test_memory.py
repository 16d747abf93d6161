"""The activation memory planner: lifetimes, reuse, aliases, kept blobs."""
from types import SimpleNamespace

import numpy as np

from netdef.blob import Blob
from netdef.compile.memory import FOREVER, plan_memory


def step(bottoms, tops, shares_data=False):
    return SimpleNamespace(bottoms=bottoms, tops=tops, layer=SimpleNamespace(shares_data=shares_data))


def chain(n_layers=4, size=(1, 8, 4, 4)):
    data = Blob(size, "data")
    blobs = [data]
    steps = [step([], [data])]
    for i in range(n_layers):
        top = Blob(size, f"b{i}")
        steps.append(step([blobs[-1]], [top]))
        blobs.append(top)
    return steps, blobs


def overlapping(a, b):
    return a.start <= b.end and b.start <= a.end


def test_a_chain_needs_two_buffers_when_reusing():
    steps, blobs = chain(6)
    plan = plan_memory(steps, external={id(blobs[0])}, keep={id(blobs[-1])})
    one = 128  # 1*8*4*4 floats
    assert plan.naive_size == 6 * one
    # ping-pong pair; the kept output starts after the older buffer is dead
    assert plan.arena_size == 2 * one
    for a in plan.buffers:
        for b in plan.buffers:
            if a is not b and overlapping(a, b):
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset


def test_reuse_off_gives_every_buffer_its_own_memory():
    steps, blobs = chain(5)
    plan = plan_memory(steps, external={id(blobs[0])}, keep=set(), reuse=False)
    assert plan.arena_size == plan.naive_size
    assert all(b.end == FOREVER for b in plan.buffers)


def test_kept_blobs_survive_and_views_do_not_alias_live_data():
    steps, blobs = chain(5)
    keep = {id(blobs[2]), id(blobs[-1])}
    plan = plan_memory(steps, external={id(blobs[0])}, keep=keep)
    arena = plan.bind()
    for i, b in enumerate(blobs[1:], 1):
        b.data[...] = i
    # the kept intermediate is not overwritten by later writes
    assert np.all(blobs[2].data == 2) and np.all(blobs[-1].data == 5)
    assert arena.size >= plan.arena_size


def test_in_place_tops_are_the_same_buffer():
    data = Blob((2, 3), "data")
    conv = Blob((2, 3), "conv")
    steps = [step([], [data]), step([data], [conv]), step([conv], [conv]), step([conv], [Blob((2, 3), "out")])]
    plan = plan_memory(steps, external={id(data)}, keep=set())
    assert len(plan.buffers) == 2
    conv_buf = next(b for b in plan.buffers if conv in b.blobs)
    assert conv_buf.end == 3


def test_shared_data_tops_extend_the_base_lifetime():
    data = Blob((2, 3, 2, 2), "data")
    a = Blob((2, 3, 2, 2), "a")
    flat = Blob((2, 12), "flat")
    c = Blob((2, 12), "c")
    steps = [step([], [data]), step([data], [a]), step([a], [flat], shares_data=True), step([flat], [c])]
    plan = plan_memory(steps, external={id(data)}, keep={id(c)})
    base = next(b for b in plan.buffers if a in b.blobs)
    assert flat in base.blobs and base.end == 3
    plan.bind()
    a.data[...] = 7
    assert np.shares_memory(a.data, flat.data) and np.all(flat.data == 7)


def test_views_of_a_net_input_follow_the_array_the_user_feeds():
    # Split and Flatten over an input get no buffer: each forward the input
    # blob holds a new user array, and their data is always that array
    data = Blob((2, 3, 2, 2), "data")
    s0, s1 = Blob((2, 3, 2, 2), "s0"), Blob((2, 3, 2, 2), "s1")
    flat = Blob((2, 12), "flat")
    out = Blob((2, 12), "out")
    steps = [step([], [data]), step([data], [s0, s1], shares_data=True),
             step([s1], [flat], shares_data=True), step([s0, flat], [out])]
    plan = plan_memory(steps, external={id(data)}, keep={id(out)})
    assert [b.blobs for b in plan.buffers] == [[out]]
    plan.bind()
    for value in (1.0, 2.0):
        fed = np.full((2, 3, 2, 2), value, np.float32)
        data.data = fed
        for view in (s0, s1, flat):
            assert np.shares_memory(view.data, fed) and view.data.shape == view.shape
    # giving a follower storage of its own ends the aliasing
    s1.bind(data=np.zeros((2, 3, 2, 2), np.float32))
    assert not np.shares_memory(s1.data, data.data)


def test_a_split_input_net_reads_each_fed_array_and_copies_nothing():
    from netdef.net import Net

    net = Net("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "Power" bottom: "data" top: "a" power_param { scale: 2 } }
        layer { name: "b" type: "Power" bottom: "data" top: "b" power_param { shift: 1 } }
        layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
        """, optimize=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((2, 3)).astype(np.float32)
        kept = x.copy()
        out = net.forward(data=x)["sum"]
        np.testing.assert_allclose(out, 3 * kept + 1, rtol=1e-6)
        np.testing.assert_array_equal(x, kept)          # the user's array is not written
        plan = net._plan()
        k, split = next((k, s) for k, s in enumerate(plan.steps) if s.layer.type == "Split")
        assert all(np.shares_memory(t.data, x) for t in split.tops)
        assert k in plan.idle                  # the step is not even called
