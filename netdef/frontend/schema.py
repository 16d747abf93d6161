"""The protobuf schema (proto/netdef.proto), generated into netdef/_proto.

``pb`` is the generated module: ``pb.NetParameter``, ``pb.LayerParameter``,
``pb.BlobProto`` ... Tables that depend on the schema (which ``*_param``
fields exist, enum names) are derived from its descriptors here rather than
written by hand.
"""
from __future__ import annotations

from netdef._proto import netdef_pb2 as pb

TRAIN = pb.TRAIN
TEST = pb.TEST
PHASES = {"TRAIN": pb.TRAIN, "TEST": pb.TEST}
PHASE_NAMES = {v: k for k, v in PHASES.items()}


def phase_value(phase) -> int:
    """Accept 'TRAIN'/'TEST' (any case), the enum value, or None (TEST)."""
    if phase is None:
        return pb.TEST
    if isinstance(phase, str):
        try:
            return PHASES[phase.upper()]
        except KeyError:
            from netdef.errors import NetdefError

            raise NetdefError(f"unknown phase {phase!r}: expected TRAIN or TEST") from None
    return int(phase)


def layer_param_fields() -> list[str]:
    """Names of every ``*_param`` sub-message of LayerParameter."""
    return [f.name for f in pb.LayerParameter.DESCRIPTOR.fields if f.name.endswith("_param")]
