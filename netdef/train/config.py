"""Reading a solver: the prototxt, its checks, its paths and its nets.

A solver file gets the net parser's errors (file:line:col, did-you-mean on
field and enum names). What Caffe checks with CHECK-aborts at start-up
(one train net, one test_iter per test net, test_state counts, a known
lr_policy and regularization_type, ...) is checked here, before any net is
built, and each error points at the field.

Paths (``net``, ``train_net``, ``test_net``, ``snapshot_prefix``) are
relative to the working directory, as in Caffe; when a path does not exist
there but does beside the solver file, that one is used and a note says so.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

from netdef.errors import Location, NetdefError, did_you_mean
from netdef.frontend.parse import SourceMap, parse_message
from netdef.frontend.schema import TRAIN, TEST, pb
from netdef.frontend.upgrade import upgrade_solver
from netdef.train.lr_policy import check_policy

TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")
REGULARIZATION_TYPES = ("L2", "L1")


@dataclass
class NetSpec:
    """One net of the solver: its source and Caffe's merged NetState."""

    source: object            # a path (str) or a NetSource
    state: pb.NetState
    origin: str               # for log lines: "net file: lenet.prototxt", "test_net_param"

    @property
    def stages(self) -> list[str]:
        return list(self.state.stage)


@dataclass
class SolverConfig:
    """A parsed, upgraded and checked SolverParameter with its source map."""

    param: pb.SolverParameter
    source_map: SourceMap | None = None
    path: str | None = None                  # the solver file, when read from one
    notes: list[str] = field(default_factory=list)

    def where(self, *path) -> Location | str | None:
        """Location of field ``path`` in the solver file (else the file name)."""
        if self.source_map is not None and path:
            location = self.source_map.location(path)
            if location is not None:
                return location
        return self.path

    def where_first(self, *paths) -> Location | str | None:
        """The location of the first of ``paths`` written in the file."""
        for path in paths:
            location = self.where(*path)
            if isinstance(location, Location):
                return location
        return self.path

    # ---- paths ---------------------------------------------------------------
    def resolve(self, path: str, *field_path, must_exist: bool = True) -> str:
        """``path`` relative to the working directory (Caffe), else beside the
        solver file, with a note; a NetdefError at the field when neither exists
        (``must_exist=False``: ``path`` itself then)."""
        if os.path.exists(path):
            return path
        if self.path and not os.path.isabs(path):
            folder = os.path.dirname(self.path)
            beside = os.path.join(folder, path)
            if os.path.exists(beside):
                self.notes.append(f"{field_path[0]} '{path}' is not in the working directory; "
                                  f"using '{beside}' (relative to the solver file)")
                return beside
            # Caffe's examples name files from the Caffe root
            # ("examples/mnist/lenet_train_test.prototxt") and keep them beside the solver.
            beside = os.path.join(folder, os.path.basename(path))
            if must_exist and os.path.isfile(beside):
                self.notes.append(f"{field_path[0]} '{path}' is not in the working directory; "
                                  f"using '{beside}' (the file of that name beside the solver)")
                return beside
        if not must_exist:
            return path
        looked = f"looked in {os.getcwd()}"
        if self.path and not os.path.isabs(path):
            looked += f" and beside the solver file, in {os.path.dirname(self.path) or '.'}"
        raise NetdefError(f"{field_path[0]} file '{path}' does not exist ({looked})",
                          where=self.where(*field_path))

    def snapshot_prefix(self) -> str:
        """Caffe's rules: unset -> the solver file's path without extension;
        a directory -> that directory / the solver file's stem. A prefix whose
        folder is missing from the working directory but exists beside the
        solver file is taken from there (with a note)."""
        p = self.param
        stem = pathlib.Path(self.path).stem if self.path else "solver"
        if not p.HasField("snapshot_prefix"):
            if not self.path:
                return stem
            return str(pathlib.Path(self.path).with_suffix(""))
        prefix = p.snapshot_prefix
        if prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
            folder = self.resolve(prefix, "snapshot_prefix", must_exist=False)
            return os.path.join(folder, stem)
        folder = os.path.dirname(prefix)
        if folder:
            folder = self.resolve(folder, "snapshot_prefix", must_exist=False)
            return os.path.join(folder, os.path.basename(prefix))
        return prefix

    # ---- nets --------------------------------------------------------------
    def train_net(self) -> NetSpec:
        from netdef.frontend.source import read_net

        p = self.param
        given = [f for f in TRAIN_NET_FIELDS if p.HasField(f)]
        if not given:
            raise NetdefError("the solver names no train net", where=self.path,
                              hint="set one of: " + ", ".join(TRAIN_NET_FIELDS))
        if len(given) > 1:
            raise NetdefError(f"the solver names its train net {len(given)} times "
                              f"({', '.join(given)})", where=self.where(given[1]),
                              hint="keep only one of: " + ", ".join(TRAIN_NET_FIELDS))
        name = given[0]
        if name.endswith("_param"):
            source = read_net(getattr(p, name), filename=self.path or "<solver>")
            origin = name
        else:
            path = self.resolve(getattr(p, name), name)
            source = read_net(path)
            origin = f"{name} file: {path}"
        state = pb.NetState(phase=TRAIN)
        state.MergeFrom(source.param.state)
        state.MergeFrom(p.train_state)
        return NetSpec(source, state, origin)

    def test_nets(self) -> list[NetSpec]:
        """Caffe's InitTestNets: test_net_param, then test_net files, then as
        many copies of the generic net (net/net_param) as test_iter has left."""
        from netdef.frontend.source import read_net

        p = self.param
        generic = [f for f in ("net", "net_param") if p.HasField(f)]
        n_given = len(p.test_net_param) + len(p.test_net)
        n_iters = len(p.test_iter)
        if generic and n_iters < n_given or not generic and n_iters != n_given:
            raise NetdefError(f"{n_iters} test_iter value(s) for {n_given} test net(s)",
                              where=self.where("test_iter", 0) or self.where(),
                              hint="give one test_iter per test net")
        specs = []
        for net in p.test_net_param:
            specs.append((read_net(net, filename=self.path or "<solver>"), "test_net_param"))
        for i, name in enumerate(p.test_net):
            path = self.resolve(name, "test_net", i)
            specs.append((read_net(path), f"test_net file: {path}"))
        remaining = n_iters - n_given
        if remaining and generic:
            if generic[0] == "net_param":
                source, origin = read_net(p.net_param, filename=self.path or "<solver>"), \
                    "net_param"
            else:
                path = self.resolve(p.net, "net")
                source, origin = read_net(path), f"net file: {path}"
            specs += [(source, origin)] * remaining
        if len(p.test_state) and len(p.test_state) != len(specs):
            raise NetdefError(f"{len(p.test_state)} test_state(s) for {len(specs)} test net(s)",
                              where=self.where("test_state", 0),
                              hint="give test_state once per test net, or not at all")
        if specs and p.test_interval <= 0:
            raise NetdefError(f"{len(specs)} test net(s) but test_interval is "
                              f"{p.test_interval}", where=self.where_first(
                                  ("test_interval",), ("test_iter", 0)),
                              hint="set test_interval > 0, or remove test_iter")
        out = []
        for i, (source, origin) in enumerate(specs):
            state = pb.NetState(phase=TEST)
            state.MergeFrom(source.param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            out.append(NetSpec(source, state, origin))
        return out

    # ---- checks ----------------------------------------------------------
    def check(self) -> None:
        """Caffe's start-up checks, as errors at the field."""
        p = self.param
        check_policy(p, self.where)
        if p.regularization_type not in REGULARIZATION_TYPES:
            raise NetdefError(f"unknown regularization_type {p.regularization_type!r}",
                              where=self.where("regularization_type"),
                              hint=did_you_mean(p.regularization_type, REGULARIZATION_TYPES)
                              or "use \"L2\" or \"L1\"")
        for name, low in (("average_loss", 1), ("iter_size", 1), ("max_iter", 0),
                          ("display", 0), ("snapshot", 0), ("test_interval", 0)):
            if getattr(p, name) < low:
                raise NetdefError(f"{name} must be at least {low}, got {getattr(p, name)}",
                                  where=self.where(name))
        for i, n in enumerate(p.test_iter):
            if n < 0:
                raise NetdefError(f"test_iter must not be negative, got {n}",
                                  where=self.where("test_iter", i))
        if p.snapshot_format == pb.SolverParameter.HDF5:
            self.notes.append(f"{self.where('snapshot_format')}: snapshot_format: HDF5 is not "
                              "supported; snapshots are written as BINARYPROTO "
                              "(.caffemodel + .solverstate)")
        if p.clip_gradients == 0:
            raise NetdefError("clip_gradients: 0 would zero every gradient",
                              where=self.where("clip_gradients"),
                              hint="a negative value (the default, -1) turns clipping off")
        for name, what in (("snapshot_diff", "snapshots hold weights only"),
                           ("debug_info", "per-blob statistics are not printed")):
            if getattr(p, name):
                self.notes.append(f"{name}: true is not supported and ignored ({what})")


def load_solver(solver) -> SolverConfig:
    """A SolverConfig from a solver file path, prototxt text, a
    SolverParameter, or a SolverConfig (returned as is)."""
    from netdef.frontend.source import read_text

    if isinstance(solver, SolverConfig):
        return solver
    if isinstance(solver, pb.SolverParameter):
        param, _ = upgrade_solver(solver)
        return SolverConfig(param)
    if isinstance(solver, str) and ("{" in solver or "\n" in solver):
        text, path = solver, None
        name = "<string>"
    else:
        path = os.fspath(solver)
        text, name = read_text(path), path
    param, source_map = parse_message(text, pb.SolverParameter, name)
    param, log = upgrade_solver(param, source_map)
    return SolverConfig(param, source_map, path, list(log))
