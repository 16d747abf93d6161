"""Make any NetParameter / SolverParameter current, as an ordered list of passes.

Each pass is a ``Pass(name, needs, apply)``: ``needs(state)`` says whether the
net has the legacy construct, ``apply(state)`` rewrites it and appends one
human-readable line to the log. The field mappings are tables (V0 field ->
V1 destination per V0 type, V1 enum -> type string derived from the enum
names), not switches. Passes, in order:

1. refuse nets mixing ``layer`` and legacy ``layers`` (never drop layers);
2. fold V0 ``padding`` layers into the next convolution/pooling ``pad``;
3. V0 (``layers { layer { type: "conv" } }``) -> V1;
4. V1 (``layers { type: CONVOLUTION blobs_lr: 1 }``) -> current ``layer``;
5. legacy transform fields of data/image_data/window_data_param -> transform_param;
6. deploy header (``input`` + ``input_dim``/``input_shape``) -> an Input layer;
7. BatchNorm's three old-style ``param { lr_mult: 0 }`` are dropped.

Every output layer keeps an ``Origin``: the path of the entry it came from in
the original text, so errors can point at the user's file even after an
upgrade (frontend.NetSource.field_location inverts the tables for fields).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from netdef.errors import UpgradeError, did_you_mean
from netdef.frontend.schema import pb

__all__ = ["Origin", "NetUpgrade", "upgrade_net", "upgrade_solver", "net_format", "PASSES",
           "V0_TYPES", "V0_FIELDS", "V1_TYPE_NAMES", "V1_PARAM_SPEC", "DATA_PARAMS",
           "SOLVER_TYPE_NAMES"]


class Origin(NamedTuple):
    """Where an upgraded layer came from: its format and its path in the source."""

    kind: str    # "V2", "V1", "V0" or "input" (the deploy header)
    path: tuple  # e.g. ("layers", 4); includes the prefix of nets nested in a solver


@dataclass
class NetUpgrade:
    param: pb.NetParameter
    origins: list[Origin]       # parallel to param.layer
    log: list[str]
    original_format: str        # "V2", "V1" or "V0"


@dataclass
class _State:
    param: pb.NetParameter
    origins: list[Origin]       # parallel to param.layers while legacy, then param.layer
    source_map: object = None
    prefix: tuple = ()          # path of this net inside the parsed text
    log: list[str] = field(default_factory=list)

    def where(self, path):
        return self.source_map.location(path) if self.source_map is not None else None


class Pass(NamedTuple):
    name: str
    needs: Callable[[_State], bool]
    apply: Callable[[_State], None]


def _copy_value(src, dst, src_name: str, dst_name: str) -> None:
    """Copy one set field between messages; enums are matched by value name."""
    src_fd = src.DESCRIPTOR.fields_by_name[src_name]
    dst_fd = dst.DESCRIPTOR.fields_by_name[dst_name]
    values = list(getattr(src, src_name)) if src_fd.is_repeated else [getattr(src, src_name)]
    if dst_fd.enum_type is not None:
        values = [dst_fd.enum_type.values_by_name[src_fd.enum_type.values_by_number[v].name].number
                  for v in values]
    target = getattr(dst, dst_name)
    if dst_fd.message_type is not None:
        if dst_fd.is_repeated:
            for v in values:
                target.add().CopyFrom(v)
        else:
            target.CopyFrom(values[0])
    elif dst_fd.is_repeated:
        target.extend(values)
    else:
        setattr(dst, dst_name, values[0])


# ------------------------------------------------------------------ mixed ----

def _is_mixed(s: _State) -> bool:
    return len(s.param.layer) > 0 and len(s.param.layers) > 0


def _refuse_mixed(s: _State) -> None:
    new_at, old_at = s.where(s.prefix + ("layer", 0)), s.where(s.prefix + ("layers", 0))
    lines = (f" (line {new_at.line})", f" (line {old_at.line})") if new_at and old_at else ("", "")
    raise UpgradeError(
        f"net mixes 'layer'{lines[0]} and legacy 'layers'{lines[1]} entries, which cannot be "
        "combined without losing layers", where=old_at,
        hint="convert the legacy 'layers' entries on their own with `netdef upgrade OLD NEW` "
             "and paste the result into the 'layer' list")


# --------------------------------------------------------------------- V0 ----

# V0 type string -> V1 LayerType name.
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}
_ANY = "*"
_CONV_IP = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
_CONV_POOL = {"conv": "convolution_param", "pool": "pooling_param"}
_BATCHED = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
            "window_data": "window_data_param"}


def _per_type(params: dict, v1_field: str) -> dict:
    return {v0_type: f"{param}.{v1_field}" for v0_type, param in params.items()}


# V0 field -> {V0 type (or "*" for every type): "V1 destination"}. A set V0
# field with no entry for its layer's type is an error, not silently lost.
V0_FIELDS = {
    "name": {_ANY: "name"},
    "blobs": {_ANY: "blobs"},
    "blobs_lr": {_ANY: "blobs_lr"},
    "weight_decay": {_ANY: "weight_decay"},
    "num_output": _per_type(_CONV_IP, "num_output"),
    "biasterm": _per_type(_CONV_IP, "bias_term"),
    "weight_filler": _per_type(_CONV_IP, "weight_filler"),
    "bias_filler": _per_type(_CONV_IP, "bias_filler"),
    "pad": _per_type(_CONV_POOL, "pad"),
    "kernelsize": _per_type(_CONV_POOL, "kernel_size"),
    "stride": _per_type(_CONV_POOL, "stride"),
    "group": {"conv": "convolution_param.group"},
    "pool": {"pool": "pooling_param.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"},
    "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"},
    "k": {"lrn": "lrn_param.k"},
    "source": {**_per_type(_BATCHED, "source"),
               "infogain_loss": "infogain_loss_param.source"},
    "batchsize": _per_type(_BATCHED, "batch_size"),
    "rand_skip": {"data": "data_param.rand_skip", "images": "image_data_param.rand_skip"},
    "scale": {_ANY: "transform_param.scale"},
    "meanfile": {_ANY: "transform_param.mean_file"},
    "cropsize": {_ANY: "transform_param.crop_size"},
    "mirror": {_ANY: "transform_param.mirror"},
    "shuffle_images": {"images": "image_data_param.shuffle"},
    "new_height": {"images": "image_data_param.new_height"},
    "new_width": {"images": "image_data_param.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": "window_data_param.fg_threshold"},
    "det_bg_threshold": {"window_data": "window_data_param.bg_threshold"},
    "det_fg_fraction": {"window_data": "window_data_param.fg_fraction"},
    "det_context_pad": {"window_data": "window_data_param.context_pad"},
    "det_crop_mode": {"window_data": "window_data_param.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}


def _has_v0_layers(s: _State) -> bool:
    return any(entry.HasField("layer") for entry in s.param.layers)


def _v0_error(s, origin, field_name, message, hint=None):
    return UpgradeError(message, where=s.where(origin.path + ("layer", field_name))
                        or s.where(origin.path), hint=hint)


def _has_padding_layers(s: _State) -> bool:
    return any(entry.layer.type == "padding" for entry in s.param.layers)


def _fold_padding_layers(s: _State) -> None:
    """Drop V0 padding layers; their pad moves to the conv/pool that reads them."""
    padding_of: dict[str, pb.V1LayerParameter] = {}  # blob -> padding entry producing it
    kept, origins, folded = [], [], []
    for entry, origin in zip(s.param.layers, s.origins, strict=True):
        if entry.layer.type == "padding":
            if len(entry.bottom) != 1 or len(entry.top) != 1:
                raise _v0_error(s, origin, "type", f"V0 padding layer '{entry.layer.name}' must "
                                "have exactly one bottom and one top")
            padding_of[entry.top[0]] = entry
            continue
        entry = pb.V1LayerParameter.FromString(entry.SerializeToString())
        for j, bottom in enumerate(entry.bottom):
            pad = padding_of.get(bottom)
            if pad is None:
                continue
            if entry.layer.type not in ("conv", "pool"):
                raise _v0_error(s, origin, "type", f"V0 padding layer '{pad.layer.name}' feeds "
                                f"layer '{entry.layer.name}' of type '{entry.layer.type}'; only "
                                "conv and pool layers can absorb padding")
            entry.layer.pad = pad.layer.pad
            entry.bottom[j] = pad.bottom[0]
            folded.append(f"{pad.layer.name} -> {entry.layer.name}")
        for top in entry.top:
            padding_of.pop(top, None)
        kept.append(entry)
        origins.append(origin)
    del s.param.layers[:]
    s.param.layers.extend(kept)
    s.origins = origins
    s.log.append(f"folded V0 padding layers into the next layer's pad ({', '.join(folded)})"
                 if folded else "dropped unused V0 padding layers")


def _upgrade_v0_entry(s: _State, entry, origin: Origin):
    v0 = entry.layer
    out = pb.V1LayerParameter()
    out.bottom.extend(entry.bottom)
    out.top.extend(entry.top)
    extra = [fd.name for fd, _ in entry.ListFields() if fd.name not in ("layer", "bottom", "top")]
    if extra:
        raise _v0_error(s, origin, "name", f"V0 layer '{v0.name}' also sets V1 field "
                        f"'{extra[0]}' next to its nested 'layer'", hint="use one format")
    if v0.HasField("type"):
        if v0.type not in V0_TYPES:
            known = "known V0 types: " + ", ".join(sorted(V0_TYPES)) + ", padding"
            suggestion = did_you_mean(v0.type, V0_TYPES)
            raise _v0_error(s, origin, "type", f"unknown V0 layer type {v0.type!r}",
                            hint=f"{suggestion} {known}" if suggestion else known)
        out.type = pb.V1LayerParameter.LayerType.Value(V0_TYPES[v0.type])
    for fd, _ in v0.ListFields():
        if fd.name == "type":
            continue
        routes = V0_FIELDS.get(fd.name, {})
        dest = routes.get(v0.type) or routes.get(_ANY)
        if dest is None:
            raise _v0_error(s, origin, fd.name, f"V0 layer '{v0.name}' sets '{fd.name}', which "
                            f"has no meaning for type '{v0.type}'",
                            hint="remove it; Caffe would drop it too")
        *outer, leaf = dest.split(".")
        target = out
        for part in outer:
            target = getattr(target, part)
        try:
            _copy_value(v0, target, fd.name, leaf)
        except (ValueError, TypeError):  # e.g. int32 new_height: -1 into a uint32
            kind = target.DESCRIPTOR.fields_by_name[leaf]
            raise _v0_error(s, origin, fd.name, f"V0 layer '{v0.name}' sets {fd.name}: "
                            f"{getattr(v0, fd.name)}, which its current form {dest} "
                            f"cannot hold ({_type_name(kind)})",
                            hint="sizes are non-negative") from None
    return out


def _type_name(fd) -> str:
    from google.protobuf.descriptor import FieldDescriptor as FD

    names = {FD.TYPE_UINT32: "uint32", FD.TYPE_UINT64: "uint64", FD.TYPE_INT32: "int32",
             FD.TYPE_INT64: "int64", FD.TYPE_FLOAT: "float", FD.TYPE_BOOL: "bool"}
    return names.get(fd.type, "another type")


def _upgrade_v0_layers(s: _State) -> None:
    count = 0
    for i, (entry, origin) in enumerate(zip(s.param.layers, s.origins, strict=True)):
        if entry.HasField("layer"):
            s.param.layers[i].CopyFrom(_upgrade_v0_entry(s, entry, origin))
            count += 1
    s.log.append(f"upgraded {count} V0 layers to V1 (flat 'layer {{ type: \"conv\" ... }}' "
                 "settings -> typed *_param messages)")


# --------------------------------------------------------------------- V1 ----

# Enum names whose type string is not the plain CamelCase of the name.
_V1_IRREGULAR = {"ABSVAL": "AbsVal", "ARGMAX": "ArgMax", "BNLL": "BNLL", "HDF5_DATA": "HDF5Data",
                 "HDF5_OUTPUT": "HDF5Output", "LRN": "LRN", "MVN": "MVN", "RELU": "ReLU",
                 "SOFTMAX_LOSS": "SoftmaxWithLoss", "TANH": "TanH"}
V1_TYPE_NAMES = {
    v.number: _V1_IRREGULAR.get(v.name, "".join(w.capitalize() for w in v.name.split("_")))
    for v in pb.V1LayerParameter.LayerType.DESCRIPTOR.values if v.name != "NONE"
}
# V1 fields that become ParamSpec fields, by parameter blob index.
V1_PARAM_SPEC = {"param": "name", "blob_share_mode": "share_mode", "blobs_lr": "lr_mult",
                  "weight_decay": "decay_mult"}
# Every other V1 field has a LayerParameter field of the same name and type.
_V1_SAME_NAME = [fd.name for fd in pb.V1LayerParameter.DESCRIPTOR.fields
                 if fd.name not in V1_PARAM_SPEC and fd.name not in ("type", "layer")]


def _has_v1_layers(s: _State) -> bool:
    return len(s.param.layers) > 0


def _upgrade_v1_entry(s: _State, v1, origin: Origin) -> pb.LayerParameter:
    out = pb.LayerParameter()
    if v1.HasField("type"):
        if v1.type not in V1_TYPE_NAMES:
            raise UpgradeError(f"V1 layer '{v1.name}' has type NONE",
                               where=s.where(origin.path + ("type",)) or s.where(origin.path),
                               hint="give it a real layer type")
        out.type = V1_TYPE_NAMES[v1.type]
    for fd, _ in v1.ListFields():
        if fd.name in V1_PARAM_SPEC:
            for j, value in enumerate(getattr(v1, fd.name)):
                while len(out.param) <= j:
                    out.param.add()
                spec = out.param[j]
                if fd.name == "blob_share_mode":
                    value = pb.ParamSpec.DimCheckMode.Value(
                        pb.V1LayerParameter.DimCheckMode.Name(value))
                setattr(spec, V1_PARAM_SPEC[fd.name], value)
        elif fd.name in _V1_SAME_NAME:
            _copy_value(v1, out, fd.name, fd.name)
    return out


def _upgrade_v1_layers(s: _State) -> None:
    layers = [_upgrade_v1_entry(s, v1, origin)
              for v1, origin in zip(s.param.layers, s.origins, strict=True)]
    del s.param.layers[:]
    s.param.layer.extend(layers)
    s.log.append(f"upgraded {len(layers)} V1 layers to the current format (type enums -> "
                 "strings, blobs_lr/weight_decay -> param { lr_mult decay_mult })")


# --------------------------------------------------------- data transform ----

DATA_PARAMS = ("data_param", "image_data_param", "window_data_param")
# The legacy preprocessing fields: those the data params share with transform_param.
_TRANSFORM_FIELDS = {
    name: [f.name for f in getattr(pb.LayerParameter(), name).DESCRIPTOR.fields
           if f.name in pb.TransformationParameter.DESCRIPTOR.fields_by_name]
    for name in DATA_PARAMS
}


def _legacy_transform_fields(layer):
    for param in DATA_PARAMS:
        if layer.HasField(param):
            sub = getattr(layer, param)
            for name in _TRANSFORM_FIELDS[param]:
                if sub.HasField(name):
                    yield param, sub, name


def _has_legacy_transform(s: _State) -> bool:
    return any(True for layer in s.param.layer for _ in _legacy_transform_fields(layer))


def _move_transform_fields(s: _State) -> None:
    moved = []
    for layer, origin in zip(s.param.layer, s.origins, strict=True):
        for param, sub, name in list(_legacy_transform_fields(layer)):
            value = getattr(sub, name)
            if layer.transform_param.HasField(name) and getattr(layer.transform_param,
                                                                name) != value:
                raise UpgradeError(
                    f"layer '{layer.name}' sets {param}.{name} ({value!r}) and transform_param."
                    f"{name} ({getattr(layer.transform_param, name)!r})",
                    where=s.where(origin.path + (param, name)) or s.where(origin.path),
                    hint=f"keep only transform_param.{name}")
            setattr(layer.transform_param, name, value)
            sub.ClearField(name)
            moved.append(f"{layer.name}: {param}.{name}")
    s.log.append("moved legacy preprocessing fields into transform_param (" +
                 ", ".join(moved) + ")")


# ----------------------------------------------------------- input header ----

def _has_input_header(s: _State) -> bool:
    p = s.param
    return bool(len(p.input) or len(p.input_dim) or len(p.input_shape))


def _input_header_to_layer(s: _State) -> None:
    p = s.param
    prefix = s.prefix
    names = list(p.input)

    def fail(message, field_name, index=0, hint=None):
        where = s.where(prefix + (field_name, index)) or s.where(prefix + ("input", 0))
        raise UpgradeError(message, where=where, hint=hint)

    if not names:
        fail("'input_dim'/'input_shape' given without any 'input' name",
             "input_dim" if len(p.input_dim) else "input_shape", hint="add input: \"data\"")
    if len(p.input_dim) and len(p.input_shape):
        fail("the input header mixes 'input_dim' and 'input_shape'", "input_dim",
             hint="use one input_shape { dim ... } per input")
    if len(p.input_shape):
        if len(p.input_shape) != len(names):
            fail(f"{len(p.input_shape)} input_shape for {len(names)} inputs "
                 f"({', '.join(names)}): give exactly one per input", "input_shape")
        shapes = [list(shape.dim) for shape in p.input_shape]
    elif len(p.input_dim):
        if len(p.input_dim) != 4 * len(names):
            fail(f"{len(p.input_dim)} input_dim values for {len(names)} input"
                 f"{'s' if len(names) > 1 else ''} ({', '.join(repr(n) for n in names)}): "
                 "expected 4 per input (N, C, H, W)", "input_dim")
        dims = list(p.input_dim)
        shapes = [dims[4 * i:4 * i + 4] for i in range(len(names))]
    else:
        fail(f"input {names[0]!r} has no shape", "input",
             hint="add four input_dim values or one input_shape { dim ... } per input")
    layer = pb.LayerParameter(name="input", type="Input", top=names)
    for dims in shapes:
        layer.input_param.shape.add().dim.extend(dims)
    p.layer.insert(0, layer)
    s.origins.insert(0, Origin("input", prefix + ("input", 0)))
    for name in ("input", "input_dim", "input_shape"):
        p.ClearField(name)
    described = ", ".join(f"{n}: {'x'.join(map(str, d))}" for n, d in zip(names, shapes, strict=True))
    s.log.append(f"converted input header ({described}) to an Input layer")


# -------------------------------------------------------------- BatchNorm ----

def _has_legacy_bn_params(s: _State) -> bool:
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in s.param.layer)


def _drop_bn_params(s: _State) -> None:
    names = []
    for layer in s.param.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            del layer.param[:]
            names.append(layer.name)
    s.log.append(f"dropped the 3 old-style 'param' entries of BatchNorm layers {', '.join(names)} "
                 "(BatchNorm statistics are never learned; the layer fixes lr_mult 0 itself)")


PASSES = [
    Pass("mixed_layer_layers", _is_mixed, _refuse_mixed),
    Pass("v0_padding", _has_padding_layers, _fold_padding_layers),
    Pass("v0_to_v1", _has_v0_layers, _upgrade_v0_layers),
    Pass("v1_to_v2", _has_v1_layers, _upgrade_v1_layers),
    Pass("data_transform", _has_legacy_transform, _move_transform_fields),
    Pass("input_header", _has_input_header, _input_header_to_layer),
    Pass("batchnorm_params", _has_legacy_bn_params, _drop_bn_params),
]


def net_format(param: pb.NetParameter) -> str:
    """"V0", "V1" or "V2" (current) by the layer lists a net uses."""
    if any(entry.HasField("layer") for entry in param.layers):
        return "V0"
    return "V1" if len(param.layers) else "V2"


def upgrade_net(param: pb.NetParameter, source_map=None, prefix: tuple = (), *,
                stop_after: str | None = None) -> NetUpgrade:
    """Run every pass that applies to a copy of ``param``.

    ``source_map`` (from parse_message) and ``prefix`` (the path of this net
    inside the parsed text, e.g. ``("net_param",)``) locate errors and
    origins. ``stop_after`` names a pass to stop after (tests use it to look
    at the intermediate V1 form).
    """
    fmt = net_format(param)
    param = pb.NetParameter.FromString(param.SerializeToString())
    legacy = len(param.layers) > 0 and not len(param.layer)
    kinds = ["V0" if e.HasField("layer") else "V1" for e in param.layers] if legacy else None
    listed = "layers" if legacy else "layer"
    count = len(param.layers) if legacy else len(param.layer)
    origins = [Origin(kinds[i] if legacy else "V2", prefix + (listed, i)) for i in range(count)]
    state = _State(param, origins, source_map, prefix)
    for upgrade in PASSES:
        if upgrade.needs(state):
            upgrade.apply(state)
        if upgrade.name == stop_after:
            break
    return NetUpgrade(state.param, state.origins, state.log, fmt)


# ----------------------------------------------------------------- solver ----

SOLVER_TYPE_NAMES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                     "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def upgrade_solver(solver: pb.SolverParameter, source_map=None):
    """Upgraded copy of ``solver`` (solver_type enum -> type string, nested nets) and the log."""
    solver = pb.SolverParameter.FromString(solver.SerializeToString())
    log = []
    if solver.HasField("solver_type"):
        enum_name = pb.SolverParameter.SolverType.Name(solver.solver_type)
        new = SOLVER_TYPE_NAMES[enum_name]
        if solver.HasField("type") and solver.type != new:
            where = source_map.location(("type",)) if source_map is not None else None
            raise UpgradeError(f"solver sets both solver_type: {enum_name} and type: "
                               f"{solver.type!r}", where=where, hint="keep only 'type'")
        solver.type = new
        solver.ClearField("solver_type")
        log.append(f"converted solver_type: {enum_name} to type: \"{new}\"")
    nets = [(("net_param",), solver.net_param)] if solver.HasField("net_param") else []
    if solver.HasField("train_net_param"):
        nets.append((("train_net_param",), solver.train_net_param))
    nets += [(("test_net_param", i), net) for i, net in enumerate(solver.test_net_param)]
    for prefix, net in nets:
        result = upgrade_net(net, source_map, prefix)
        net.CopyFrom(result.param)
        log += [f"{'.'.join(map(str, prefix))}: {line}" for line in result.log]
    return solver, log
