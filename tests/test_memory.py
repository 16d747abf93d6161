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


# -------------------------------------------- Concat bottoms in their top ----
CONCAT_NET = """name: "inception"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: {n} dim: 3 dim: 6 dim: 5 }} }} }}
layer {{ name: "a" type: "Convolution" bottom: "data" top: "a"
        convolution_param {{ num_output: 4 kernel_size: 1 }} }}
layer {{ name: "relu_a" type: "ReLU" bottom: "a" top: "a" }}
layer {{ name: "b" type: "Convolution" bottom: "data" top: "b"
        convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 }} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param {{ pool: MAX kernel_size: 3 stride: 1 pad: 1 }} }}
layer {{ name: "join" type: "Concat" bottom: "a" bottom: "b" bottom: "{third}" top: "join" }}
layer {{ name: "after" type: "Convolution" bottom: "join" top: "after"
        convolution_param {{ num_output: 3 kernel_size: 1 }} }}
{extra}"""


def _concat_nets(tmp_path, n=1, third="pool", extra="", **kw):
    from netdef.net import Net
    from netdef.testing import randomize_weights

    path = tmp_path / "net.prototxt"
    path.write_text(CONCAT_NET.format(n=n, third=third, extra=extra))
    plain = Net(str(path), optimize=False, **kw)
    randomize_weights(plain, seed=2)
    weights = str(tmp_path / "w.caffemodel")
    plain.save(weights)
    return plain, Net(str(path), weights=weights, optimize=True, **kw)


def _joined(net) -> bool:
    return any("Concats written in their tops" in line for line in net.plan_log)


def test_concat_bottoms_are_written_in_their_top(tmp_path, monkeypatch):
    """With one image, each bottom of a Concat is its part of the top: the
    layers before it write the top and the Concat copies nothing; the
    results equal those of a plan that gives every blob its own memory."""
    plain, fast = _concat_nets(tmp_path, keep=["join"])
    x = np.random.default_rng(5).standard_normal((1, 3, 6, 5)).astype(np.float32)
    monkeypatch.setenv("NETDEF_NO_MEMORY_PLAN", "1")
    want = {k: v.copy() for k, v in plain.forward(blobs=["join", "after"], data=x).items()}
    monkeypatch.delenv("NETDEF_NO_MEMORY_PLAN")
    got = fast.forward(blobs=["join", "after"], data=x)
    assert _joined(fast)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    top = fast.blobs["join"].data
    first = 0
    for name in ("a", "b", "pool"):
        part = fast.blobs[name].data
        assert np.shares_memory(part, top)
        np.testing.assert_array_equal(part, top[:, first:first + part.shape[1]])
        first += part.shape[1]
    # nobody keeps the Concat's top: its memory is reused after its last reader
    _, lean = _concat_nets(tmp_path)
    assert _joined(lean)
    np.testing.assert_allclose(lean.forward(data=x)["after"], want["after"], rtol=1e-5,
                               atol=1e-5)


def test_concat_bottoms_keep_their_own_memory_where_they_must(tmp_path):
    """Two images (each part of the top is strided), a bottom that another
    layer also reads, and a net input as a bottom: the Concat copies, and
    the results are the same."""
    read_twice = ('layer { name: "other" type: "Convolution" bottom: "b" top: "other" '
                  'convolution_param { num_output: 1 kernel_size: 1 } }')
    for n, third, extra in ((2, "pool", ""), (1, "pool", read_twice), (1, "data", "")):
        plain, fast = _concat_nets(tmp_path, n=n, third=third, extra=extra, keep=["join"])
        x = np.random.default_rng(6).standard_normal((n, 3, 6, 5)).astype(np.float32)
        want = plain.forward(blobs=["join", "after"], data=x)
        want = {k: v.copy() for k, v in want.items()}
        got = fast.forward(blobs=["join", "after"], data=x)
        assert not _joined(fast), (n, third, extra)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
        assert not np.shares_memory(fast.blobs["b"].data, fast.blobs["join"].data)


def test_training_plans_keep_concat_copies(tmp_path):
    plain, _ = _concat_nets(tmp_path, force_backward=True)
    x = np.random.default_rng(7).standard_normal((1, 3, 6, 5)).astype(np.float32)
    plain.forward(data=x)
    plain.backward()
    assert not _joined(plain)


def test_blobs_asked_for_by_name_are_readable_in_an_optimized_net(tmp_path):
    """forward(blobs=[...]) returns those blobs as the pass left them, as
    pycaffe does, although an optimized plan reuses their memory: they are
    kept from the first time they are asked for."""
    plain, fast = _concat_nets(tmp_path, n=2)
    x = np.random.default_rng(8).standard_normal((2, 3, 6, 5)).astype(np.float32)
    want = {k: v.copy() for k, v in plain.forward(blobs=["a", "b", "pool"], data=x).items()}
    got = fast.forward(blobs=["a", "b", "pool"], data=x)
    for name in ("a", "b", "pool", "after"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    plan = fast._plan()
    assert fast.forward(blobs=["a"], data=x)["a"] is not None and fast._plan() is plan
