"""The front end: prototxt text to a wired, state-filtered layer graph.

    schema.py   the generated protobuf module for proto/netdef.proto (``pb``)
    parse.py    prototxt text -> message, with a location for every field
    upgrade.py  ordered passes: V0 -> V1 -> current, input header -> Input layer
    source.py   read_net / read_solver = parse + upgrade, with file handling
    graph.py    phase/level/stage filtering, wiring, in-place layers, splits

Nothing here imports Numba or computes on arrays: summary, draw and check
stop after this package and the shape inference in ``compile.instantiate``.
"""
