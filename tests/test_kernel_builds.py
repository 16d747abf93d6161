"""netdef.kernels._jit: parallel kernels compile their threaded build only when needed.

A small call (every array under PARALLEL_MIN_WORK elements) runs a serial
build, so a small net's first run never pays for the parallel compile.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from netdef.kernels._jit import PARALLEL_MIN_WORK, OnDemandParallel, parallel_kernel, prange

JIT_DISABLED = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


def _scale(x, out):
    n = x.size
    if n < PARALLEL_MIN_WORK:
        for i in range(n):
            out[i] = 2.0 * x[i]
    else:
        for i in prange(n):
            out[i] = 2.0 * x[i]


@pytest.mark.skipif(JIT_DISABLED, reason="builds exist only with the JIT on")
def test_small_calls_use_the_serial_build_and_big_ones_the_parallel_one():
    fn = parallel_kernel(_scale)
    assert isinstance(fn, OnDemandParallel) and fn.targetoptions["parallel"]
    small = np.arange(8, dtype=np.float32)
    out = np.empty_like(small)
    fn(small, out)
    np.testing.assert_array_equal(out, 2 * small)
    assert len(fn.serial.overloads) == 1 and len(fn.overloads) == 0   # nothing parallel yet
    big = np.ones(PARALLEL_MIN_WORK, np.float32)
    out = np.empty_like(big)
    fn(big, out)
    assert out.min() == out.max() == 2.0
    assert len(fn.overloads) == 1
    assert len(fn.signatures) == 1                   # the same signature in both builds
    fn.parallel_call(small, np.empty_like(small))    # what warmup uses
    # the two builds cache under different names
    assert fn._cache._cache_file._index_name != fn.serial._cache._cache_file._index_name


@pytest.mark.skipif(JIT_DISABLED, reason="builds exist only with the JIT on")
def test_work_per_element_lowers_the_parallel_threshold():
    def _double(x, out):
        for i in prange(x.size):
            out[i] = 2.0 * x[i]

    fn = parallel_kernel(work_per_element=4)(_double)
    assert fn.min_work == PARALLEL_MIN_WORK // 4
    below = np.ones(PARALLEL_MIN_WORK // 4 - 1, np.float32)
    fn(below, np.empty_like(below))
    assert len(fn.overloads) == 0 and len(fn.serial.overloads) == 1
    at = np.ones(PARALLEL_MIN_WORK // 4, np.float32)
    out = np.empty_like(at)
    fn(at, out)
    assert len(fn.overloads) == 1 and out.min() == out.max() == 2.0
    from netdef.kernels.depthwise import depthwise_forward

    assert depthwise_forward.min_work < PARALLEL_MIN_WORK


def test_disabled_jit_keeps_the_plain_function(monkeypatch):
    import numba

    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    assert parallel_kernel(_scale) is _scale


@pytest.mark.parametrize("value", ["lots", "-5", "0"])
def test_a_bad_thread_threshold_warns_and_keeps_the_default(value):
    import subprocess
    import sys

    env = dict(os.environ, NETDEF_PARALLEL_MIN_WORK=value)
    done = subprocess.run(
        [sys.executable, "-c", "from netdef.kernels import _jit; "
         "print(_jit.PARALLEL_MIN_WORK, _jit.POOL_GEMM)"],
        capture_output=True, text=True, env=env, check=True)
    threshold, pool = done.stdout.split()
    # the default: 64K elements when the GEMMs run on Numba's pool, 1M otherwise
    assert int(threshold) == ((1 << 16) if pool == "True" else (1 << 20))
    assert "NETDEF_PARALLEL_MIN_WORK" in done.stderr and "not a positive" in done.stderr
    assert "Traceback" not in done.stderr


POOL_CHECK = """
import os, netdef
from netdef.kernels import _jit
before = os.sched_getaffinity(0)
_jit._start_pool()
import numba
print(os.environ.get("OMP_PROC_BIND"), netdef._CALLER_CPUS is not None,
      os.sched_getaffinity(0) == before, numba.get_num_threads() >= 1)
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux's CPU affinity calls")
@pytest.mark.parametrize("user", [None, "false", "inherited", "small pool"])
def test_the_pool_is_bound_and_the_caller_keeps_its_cpus(user):
    """netdef binds the pool's threads (OMP_PROC_BIND=spread) unless the user
    chose a binding, and the thread that started the pool gets its CPUs back;
    a child process that inherits netdef's own setting is treated alike."""
    import subprocess
    import sys

    from netdef.kernels._jit import POOL_GEMM

    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY",
                        "NETDEF_SET_OMP_PROC_BIND")}
    if user == "false":
        env["OMP_PROC_BIND"] = "false"
    elif user == "inherited":
        env.update(OMP_PROC_BIND="spread", NETDEF_SET_OMP_PROC_BIND="1")
    elif user == "small pool":
        if len(os.sched_getaffinity(0)) < 2:
            pytest.skip("one CPU: no pool is smaller than the machine")
        env["NUMBA_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", POOL_CHECK], capture_output=True, text=True,
                          env=env, check=True)
    bind, ours, kept, started = done.stdout.split()
    assert kept == started == "True"
    if user == "false":
        assert (bind, ours) == ("false", "False")
    elif user == "small pool":
        assert (bind, ours) == ("None", "False")
    elif POOL_GEMM:
        assert (bind, ours) == ("spread", "True")


PLACE_CHECK = """
import os, netdef
import numpy as np
from netdef.kernels import _jit
from netdef.net import Net
caller = os.sched_getaffinity(0)
_jit._start_pool()
seen = {}

class Probe:
    def setup(self, bottom, top): pass
    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        seen["python layer"] = os.sched_getaffinity(0)
        top[0].data[...] = bottom[0].data

import sys, types
sys.modules["probe_module"] = types.SimpleNamespace(Probe=Probe)
proto = os.environ["NET"]
net = Net(proto)
relu = next(layer for layer in net.layers if layer.name == "relu")
original = relu.forward
def spy(bottoms, tops):
    seen["native step"] = os.sched_getaffinity(0)
    original(bottoms, tops)
relu.forward = spy
net.forward(data=np.ones((1, 2), np.float32))
master = _jit._MASTER_CPUS
print(master is not None and master < caller,
      seen["native step"] == (master or caller), seen["python layer"] == caller,
      os.sched_getaffinity(0) == caller)
"""

PLACE_NET = """layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 } } }
layer { name: "probe" type: "Python" bottom: "data" top: "probe"
        python_param { module: "probe_module" layer: "Probe" } }
layer { name: "relu" type: "ReLU" bottom: "probe" top: "out" }
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux's CPU affinity calls")
def test_a_net_runs_on_the_callers_openmp_place(tmp_path):
    """While a net runs, its thread stays on the CPUs GNU OpenMP bound it to
    (the workers have the others); a Python layer's code runs on all the
    caller's CPUs, and the caller has them all again afterwards."""
    import subprocess
    import sys

    from netdef.kernels._jit import POOL_GEMM

    if len(os.sched_getaffinity(0)) < 2 or not POOL_GEMM:
        pytest.skip("netdef binds the pool only with two CPUs or more and the pooled BLAS")
    net = tmp_path / "net.prototxt"
    net.write_text(PLACE_NET)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY",
                        "NETDEF_SET_OMP_PROC_BIND", "NUMBA_NUM_THREADS")}
    env["NET"] = str(net)
    done = subprocess.run([sys.executable, "-c", PLACE_CHECK], capture_output=True, text=True,
                          env=env, check=True)
    assert done.stdout.split() == ["True"] * 4, done.stdout + done.stderr


def test_on_cpus_without_a_place_changes_nothing(monkeypatch):
    from netdef.kernels import _jit

    monkeypatch.setattr(_jit, "_MASTER_CPUS", None)
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    with _jit.master_place() as placed, _jit.caller_place():
        assert placed.saved is None
        if before is not None:
            assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux's CPU affinity calls")
def test_prefetch_thread_gets_the_callers_cpus(monkeypatch):
    """A prefetch thread started inside a forward pass (on the OpenMP place)
    runs on every CPU the caller had."""
    import netdef
    from netdef.data.prefetch import Prefetcher
    from netdef.kernels import _jit

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("one CPU: there is no smaller place")
    monkeypatch.setattr(netdef, "_CALLER_CPUS", cpus)
    monkeypatch.setattr(_jit, "_MASTER_CPUS", {min(cpus)})

    def make():
        while True:
            yield os.sched_getaffinity(0)

    with _jit.master_place():
        assert os.sched_getaffinity(0) == {min(cpus)}
        stream = Prefetcher(make, 1, name="probe")
        try:
            assert next(stream) == cpus
        finally:
            stream.close()
    assert os.sched_getaffinity(0) == cpus
