"""Run an unmodified pycaffe script on netdef: ``netdef pycaffe script.py ARGS``.

For the running process only, a finder on ``sys.meta_path`` answers the
``caffe`` imports with netdef's modules (netdef installs no ``caffe``
package, so a real pycaffe elsewhere is never shadowed outside this)::

    caffe                    netdef.compat.caffe
    caffe.io                 netdef.compat.caffe_io
    caffe.proto              (a module holding caffe_pb2)
    caffe.proto.caffe_pb2    netdef's schema module
    caffe.net_spec           netdef.compat.net_spec
    caffe.draw               netdef.compat.caffe_draw
    caffe.coord_map          netdef.compat.coord_map
    caffe.classifier         netdef.compat.caffe_classifier
    caffe.detector           netdef.compat.caffe_detector
    caffe.pycaffe, caffe._caffe    netdef.compat.caffe

The script runs as ``python script.py ARGS`` would run it: as
``__main__``, with ``sys.argv = [script, *ARGS]`` and its folder first on
``sys.path``. Its exit code is Python's: 0, the ``sys.exit`` code, or 1
after an uncaught exception, whose traceback is printed by
``sys.excepthook`` from the script's frame on.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys

ALIASES = {
    "caffe": "netdef.compat.caffe",
    "caffe.io": "netdef.compat.caffe_io",
    "caffe.proto": "netdef.compat.caffe:proto",
    "caffe.proto.caffe_pb2": "netdef._proto.netdef_pb2",
    "caffe.net_spec": "netdef.compat.net_spec",
    "caffe.draw": "netdef.compat.caffe_draw",
    "caffe.coord_map": "netdef.compat.coord_map",
    "caffe.classifier": "netdef.compat.caffe_classifier",
    "caffe.detector": "netdef.compat.caffe_detector",
    "caffe.pycaffe": "netdef.compat.caffe",
    "caffe._caffe": "netdef.compat.caffe",
}


def _target(spec: str):
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None                              # a placeholder, replaced in exec_module

    def exec_module(self, module) -> None:
        # The import system returns whatever sys.modules holds once the loader
        # is done, so the netdef module itself becomes ``caffe...``, untouched.
        sys.modules[module.__name__] = _target(ALIASES[module.__name__])


class CaffeAliasFinder(importlib.abc.MetaPathFinder):
    """Answers ``caffe`` and its submodules with netdef's modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in ALIASES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(),
                                                  is_package=fullname in ("caffe", "caffe.proto"))
        return None


def install() -> CaffeAliasFinder:
    """Make ``import caffe`` mean netdef in this process (idempotent)."""
    for finder in sys.meta_path:
        if isinstance(finder, CaffeAliasFinder):
            return finder
    for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
        del sys.modules[name]                    # a real pycaffe imported earlier
    finder = CaffeAliasFinder()
    sys.meta_path.insert(0, finder)
    return finder


def uninstall() -> None:
    """Undo :func:`install` (the aliases already imported are dropped too)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, CaffeAliasFinder)]
    for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
        del sys.modules[name]


def _exit_code(stop: SystemExit) -> int:
    """Python's rule for ``sys.exit(code)``."""
    code = stop.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _from_script(tb, script: str):
    """The traceback from the script's first frame on (drops the runner's)."""
    start = tb
    while start is not None and os.path.abspath(start.tb_frame.f_code.co_filename) != script:
        start = start.tb_next
    return start or tb


def run(script, args=()) -> int:
    """Run ``script`` with ``args`` as ``python script args`` would; its exit code."""
    import runpy

    script = os.path.abspath(os.fspath(script))
    if not os.path.isfile(script):
        print(f"netdef pycaffe: can't open file '{script}': no such file", file=sys.stderr)
        return 2
    install()
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path[:1] = [os.path.dirname(script)]     # python puts the script's folder first
    try:
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as stop:
        return _exit_code(stop)
    except KeyboardInterrupt:
        raise
    except BaseException as err:           # the script's own error: Python's report
        tb = _from_script(err.__traceback__, script)
        sys.excepthook(type(err), err.with_traceback(tb), tb)
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass


USAGE = "usage: {prog} SCRIPT.py [ARGS ...]\nRun an unmodified pycaffe script on netdef."


def main(argv=None, prog: str = "netdef pycaffe") -> int:
    """``python -m netdef.compat.caffe SCRIPT.py ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(prog=prog), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    return run(argv[0], argv[1:])
