"""Layer families. Importing this package registers every layer type."""
from netdef.layers import (  # noqa: F401  (imported for their @register side effects)
    combine,
    data,
    dense,
    detection,
    depthwise,
    loss,
    lrn,
    neuron,
    normalization,
    pooling,
    python,
    softmax,
    structure,
    vision,
)
from netdef.layers.base import Layer, create_layer, layer_class, layer_types, register

__all__ = ["Layer", "create_layer", "layer_class", "layer_types", "register"]
