"""Real Caffe files: every net shape-checks in both phases, deploy and
train_val of one model agree, and our own zoo round-trips through text."""
import pytest

from conftest import shared_prototxts, zoo_prototxts
from netdef.compile.instantiate import instantiate
from netdef.frontend.source import read_net
from netdef.frontend.graph import build_graph
from netdef.frontend.parse import parse_message, to_text
from netdef.frontend.schema import pb

# Nets whose shapes depend on something absent here, and why.
UNKNOWABLE = {
    "hdf5_classification": "HDF5",            # needs h5py and the data files
}
NOT_NETS = {"NetUpgradeTest.TestAllParams.expected_output_proto.prototxt",
            "NetUpgradeTest.TestAllParams.input_proto.prototxt"}
STAGES = {"mnist_autoencoder.prototxt": ["test-on-test"]}


def _expect_unknown(path) -> str | None:
    for key, why in UNKNOWABLE.items():
        if key in str(path):
            return why
    return None


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("path", shared_prototxts(), ids=lambda p: p.parent.name + "/" + p.name)
def test_every_shared_net_shape_checks(shared_models, path, phase):
    if path.name in NOT_NETS:
        pytest.skip("an upgrade-test fixture that is not a valid net")
    source = read_net(path)
    graph = build_graph(source, phase, stages=STAGES.get(path.name, ()))
    inst = instantiate(graph)
    expected = _expect_unknown(path)
    if expected:
        assert inst.unknown, "expected some unknown shapes"
        assert any(expected in why for why in inst.unknown.values())
        return
    assert not inst.unknown, inst.unknown
    for step in inst.steps:
        for top in step.tops:
            assert all(d > 0 for d in top.shape) or step.layer.is_loss, (step.name, top.shape)


PAIRS = [
    ("bvlc_alexnet/train_val.prototxt", "bvlc_alexnet/deploy.prototxt"),
    ("bvlc_reference_caffenet/train_val.prototxt", "bvlc_reference_caffenet/deploy.prototxt"),
    ("bvlc_googlenet/train_val.prototxt", "bvlc_googlenet/deploy.prototxt"),
    ("finetune_flickr_style/train_val.prototxt", "finetune_flickr_style/deploy.prototxt"),
    ("squeezenet/SqueezeNet_v1.0/train_val.prototxt", "squeezenet/SqueezeNet_v1.0/deploy.prototxt"),
    ("squeezenet/SqueezeNet_v1.1/train_val.prototxt", "squeezenet/SqueezeNet_v1.1/deploy.prototxt"),
]


def _shapes(path, phase):
    inst = instantiate(build_graph(read_net(path), phase, splits=False))
    steps = [s for s in inst.steps if s.bottoms]      # data layers differ by design
    return ({s.name: [t.shape[1:] for t in s.tops] for s in steps},
            {s.name: [b.shape for b in s.layer.blobs] for s in steps})


@pytest.mark.parametrize("train_val,deploy", PAIRS, ids=[p[1].split("/")[0] for p in PAIRS])
def test_deploy_and_train_val_agree_on_shapes(shared_models, train_val, deploy):
    tv_tops, tv_params = _shapes(shared_models / train_val, "TEST")
    dp_tops, dp_params = _shapes(shared_models / deploy, "TEST")
    common = [name for name in dp_tops if name in tv_tops and dp_tops[name] and tv_tops[name]]
    assert len(common) > 10
    for name in common:
        assert dp_tops[name] == tv_tops[name], name     # per image: batch sizes differ
        assert dp_params[name] == tv_params[name], name


@pytest.mark.parametrize("path", zoo_prototxts(), ids=lambda p: p.name)
def test_zoo_files_round_trip_through_text(path):
    first, _ = parse_message(path.read_text(), pb.NetParameter, str(path))
    again, _ = parse_message(to_text(first), pb.NetParameter, "<written>")
    assert again == first
