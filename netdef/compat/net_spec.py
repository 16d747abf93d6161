"""``caffe.NetSpec``, ``caffe.layers`` (L), ``caffe.params`` (P), ``caffe.to_proto``.

Nets written in Python, as with pycaffe's ``net_spec``::

    n = caffe.NetSpec()
    n.data, n.label = L.MemoryData(batch_size=64, channels=1, height=28, width=28, ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label)
    text = str(n.to_proto())          # prototxt that netdef and Caffe parse

pycaffe's rules, kept exactly:

* ``L.Type(*bottoms, **kwargs)`` makes one layer; it returns its top, the
  tuple of its tops (``ntop=k``), or the layer itself (``ntop=0``).
  ``in_place=True`` makes the tops the bottoms.
* a keyword ending in ``param`` is a LayerParameter field (``param=[...]``,
  ``convolution_param=dict(...)``, ``transform_param``); any other keyword
  goes to the layer type's own ``*_param`` message when that message has
  the field (``L.Convolution(kernel_size=5)``), else to LayerParameter
  (``loss_weight``, ``include``, ``name``, ``propagate_down``). Which
  ``*_param`` belongs to a type comes from the schema's descriptors
  (``ConvolutionParameter`` -> ``convolution_param``), as pycaffe derives it.
* dicts become messages, lists repeated fields; a single value given for a
  repeated field is a list of one (``include=dict(phase=caffe.TRAIN)``).
* blob names come from the NetSpec attribute each top was assigned to;
  a layer is named after its first top; anything unnamed is called
  ``<Type><k>`` (``Convolution1``), counted per type in emission order.
  Layers are emitted bottoms first, in the order the tops were assigned.

Additions that pycaffe lacks (they only make failing code work): tuples
count as lists, enum values may be given by name (``pool="MAX"``), numpy
scalars are accepted, and an unknown keyword is an error naming the layer
type and the closest field names.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from netdef.compat.errors import CompatAttributeError, CompatKeyError, CompatTypeError
from netdef.errors import did_you_mean
from netdef.frontend.schema import pb


def param_name_dict() -> dict[str, str]:
    """{layer type: its ``*_param`` field}, from the LayerParameter descriptor:
    the message ``ConvolutionParameter`` names type ``Convolution``."""
    out = {}
    for field in pb.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                out.setdefault(type_name[:-len("Parameter")], field.name)
    return out


_PARAM_FIELDS = param_name_dict()


# ---------------------------------------------------------- assigning ----

def _scalar(field, value, where: str):
    """A Python/numpy value fit for a scalar field (enum names resolved)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()               # numpy scalar -> Python
    if field.enum_type is not None and isinstance(value, str):
        enum = field.enum_type.values_by_name.get(value)
        if enum is None:
            names = list(field.enum_type.values_by_name)
            raise CompatAttributeError(f"{where}: {value!r} is not a value of "
                                       f"{field.enum_type.name}",
                                       hint=did_you_mean(value, names)
                                       or f"one of {', '.join(names)}")
        return enum.number
    return value


def _fields_hint(message, name: str) -> str:
    names = list(message.DESCRIPTOR.fields_by_name)
    return did_you_mean(name, names) or f"fields: {', '.join(names)}"


def assign_proto(proto, name: str, value, where: str = "") -> None:
    """Set field ``name`` of message ``proto`` from a Python value, pycaffe's
    way: dicts fill sub-messages, lists fill repeated fields, a single value
    for a repeated field is a list of one."""
    where = where or proto.DESCRIPTOR.name
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise CompatAttributeError(f"{where}: {proto.DESCRIPTOR.name} has no field {name!r}",
                                   hint=_fields_hint(proto, name))
    here = f"{where}.{name}"
    is_message = field.message_type is not None
    if field.is_repeated:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        target = getattr(proto, name)
        for item in items:
            if not is_message:
                _set(lambda v: target.append(v), field, item, here)
            elif isinstance(item, dict):
                sub = target.add()
                for key, val in item.items():
                    assign_proto(sub, key, val, here)
            elif hasattr(item, "DESCRIPTOR"):
                target.add().CopyFrom(item)
            else:
                raise CompatTypeError(f"{here}: expected a dict for a {field.message_type.name}, "
                                      f"got {type(item).__name__}")
    elif is_message:
        if isinstance(value, dict):
            for key, val in value.items():
                assign_proto(getattr(proto, name), key, val, here)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(proto, name).CopyFrom(value)
        else:
            raise CompatTypeError(f"{here}: expected a dict for a {field.message_type.name}, "
                                  f"got {type(value).__name__}")
    else:
        _set(lambda v: setattr(proto, name, v), field, value, here)


def _set(store, field, value, where: str) -> None:
    value = _scalar(field, value, where)
    try:
        store(value)
    except (TypeError, ValueError) as err:
        raise CompatTypeError(f"{where}: cannot set {value!r}: {err}") from None


# ------------------------------------------------------------- graph ----

class Top:
    """One output blob of a layer (``fn``'s top number ``n``)."""

    def __init__(self, fn: Function, n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> pb.NetParameter:
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _update(self, params: dict) -> None:
        self.fn._update(params)

    def _to_proto(self, layers, names, autonames) -> None:
        self.fn._to_proto(layers, names, autonames)

    def __repr__(self) -> str:
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """One layer: its type, bottoms (Tops) and keyword parameters."""

    def __init__(self, type_name: str, inputs, params: dict):
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise CompatTypeError(f"L.{type_name}: bottom {i} is a {type(inp).__name__}, "
                                      "not a top made by L.<Type>(...)",
                                      hint="a layer with ntop=0 or several tops has no "
                                           "single top to pass on")
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _update(self, params: dict) -> None:
        self.params.update(params)

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[self.type_name] += 1
            names[top] = f"{self.type_name}{autonames[self.type_name]}"
        return names[top]

    def _name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = pb.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(bottoms)
        else:
            layer.top.extend(self._top_name(t, names, autonames) for t in self.tops)
        layer.name = self._name(names, autonames)
        where = f"L.{self.type_name} '{layer.name}'"
        own = _PARAM_FIELDS.get(self.type_name)
        for key, value in self.params.items():
            if key.endswith("param"):
                assign_proto(layer, key, value, where)
            elif own is not None and key in getattr(layer, own).DESCRIPTOR.fields_by_name:
                assign_proto(getattr(layer, own), key, value, f"{where}.{own}")
            elif key in pb.LayerParameter.DESCRIPTOR.fields_by_name:
                assign_proto(layer, key, value, where)
            else:
                choices = list(pb.LayerParameter.DESCRIPTOR.fields_by_name)
                if own is not None:
                    choices += list(getattr(layer, own).DESCRIPTOR.fields_by_name)
                owner = f"{own} or LayerParameter" if own else "LayerParameter (no *_param " \
                    f"message is named after type {self.type_name!r}; pass e.g. " \
                    "convolution_param=dict(...))"
                raise CompatAttributeError(f"{where}: {key!r} is not a field of {owner}",
                                           hint=did_you_mean(key, choices))
        layers[self] = layer


class NetSpec:
    """Tops assigned as attributes (or items) name their blobs and layers;
    :meth:`to_proto` emits every layer needed for them."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise CompatKeyError(f"the NetSpec has no top {name!r}",
                                 hint=did_you_mean(name, list(self.tops))) from None

    __setitem__ = __setattr__
    __getitem__ = __getattr__

    def to_proto(self) -> pb.NetParameter:
        names = {value: key for key, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for value in self.tops.values():
            value._to_proto(layers, names, autonames)
        net = pb.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops) -> pb.NetParameter:
    """A NetParameter with every layer needed to compute ``tops`` (names
    generated, as pycaffe's ``caffe.to_proto``)."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    net = pb.NetParameter()
    net.layer.extend(layers.values())
    return net


class Layers:
    """``L.Convolution(...)``: any attribute is a layer type (as in pycaffe,
    types are not checked here; the net parser does that)."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer(*bottoms, **kwargs):
            fn = Function(type_name, bottoms, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops

        layer.__name__ = type_name
        return layer


class _EnumScope:
    def __init__(self, message):
        self._message = message

    def __getattr__(self, name: str):
        try:
            return getattr(self._message, name)
        except AttributeError:
            values = [v.name for e in self._message.DESCRIPTOR.enum_types for v in e.values]
            raise CompatAttributeError(f"{self._message.DESCRIPTOR.name} has no value {name!r}",
                                       hint=did_you_mean(name, values)
                                       or f"values: {', '.join(values)}") from None


class Parameters:
    """``P.Pooling.MAX``: the constants of message ``PoolingParameter``."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(pb, f"{name}Parameter", None)
        if message is None:
            known = [n[:-len("Parameter")] for n in dir(pb) if n.endswith("Parameter")]
            raise CompatAttributeError(f"no message {name}Parameter in the schema",
                                       hint=did_you_mean(name, known))
        return _EnumScope(message)


layers = Layers()
params = Parameters()
