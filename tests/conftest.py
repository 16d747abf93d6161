"""Shared pytest fixtures.

The real Caffe files live in ../shared/models next to the checkout. A fresh
clone of netdef does not have them, so every test that needs them asks for the
``shared_models`` fixture, which skips cleanly when the folder is absent.
"""
from __future__ import annotations

import os
import pathlib

import pytest

# The suite's arrays are small: with the default threshold (1M elements,
# netdef/kernels/_jit.py) their kernel calls would never reach the parallel
# builds, which the "parallel-size" cases are there to check. Set before
# any test imports netdef, and inherited by the CLI subprocesses.
os.environ.setdefault("NETDEF_PARALLEL_MIN_WORK", str(1 << 15))

ROOT = pathlib.Path(__file__).resolve().parents[1]
ZOO = ROOT / "zoo_defs"


def _shared_models_dir() -> pathlib.Path | None:
    env = os.environ.get("NETDEF_SHARED_MODELS")
    candidates = [pathlib.Path(env)] if env else []
    candidates.append(ROOT.parent / "shared" / "models")
    for path in candidates:
        if path.is_dir():
            return path
    return None


SHARED_MODELS = _shared_models_dir()


@pytest.fixture
def shared_models() -> pathlib.Path:
    """Path to ../shared/models, or skip the test when it is absent."""
    if SHARED_MODELS is None:
        pytest.skip("../shared/models is not present (fresh clone)")
    return SHARED_MODELS


def shared_prototxts(kind: str = "net") -> list[pathlib.Path]:
    """Every net (or solver) prototxt under ../shared/models, for parametrize.

    Returns [] without ../shared, so parametrized tests collect nothing; add a
    ``shared_models`` argument to such a test so the skip reason is visible.
    """
    if SHARED_MODELS is None:
        return []
    files = sorted(SHARED_MODELS.rglob("*.prototxt"))
    if kind == "solver":
        return [p for p in files if "solver" in p.name]
    return [p for p in files if "solver" not in p.name]


def zoo_prototxts() -> list[pathlib.Path]:
    return sorted(ZOO.glob("*.prototxt"))
