"""`rsst.statefile`: the one writer and reader of a state's files and of the model contract."""

from __future__ import annotations

import torch

from rsst import statefile
from rsst.models import create_model
from rsst.statefile import ModelSpec


def test_a_created_model_carries_its_spec_and_the_metadata_round_trips(tmp_path):
    model = create_model("resnet20", num_classes=7, img_size=16, mean=(0.1, 0.2, 0.3),
                         std=(0.4, 0.5, 0.6))
    spec = ModelSpec.of(model)
    assert spec == ModelSpec("resnet20", 7, (3, 16, 16), None, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert (model.rsst_arch, model.rsst_num_classes, model.rsst_input_size) == (
        "resnet20", 7, (3, 16, 16))
    meta = statefile.state_metadata(spec, method="rsst", state=3, sparsity={"remain_weight": 1.0},
                                    structure={}, config={"seed": 1})
    masks = {"fc.weight": torch.ones_like(model.fc.weight, dtype=torch.bool)}
    statefile.write_state(tmp_path, 3, model.state_dict(), masks, meta, {"state": 3})
    tensors, read = statefile.read_file(statefile.state_weights(tmp_path, 3))
    assert ModelSpec.from_metadata(read, "f") == spec
    assert tensors["fc.weight.mask"].dtype == torch.uint8
    assert statefile.finished_states(tmp_path) == [3]
    assert statefile.read_state_record(tmp_path, 3) == {"state": 3}
    assert list(statefile.state_records(tmp_path)) == [{"state": 3}]


def test_accuracy_reads_the_saved_network_in_new_and_old_records():
    new = {"val_acc": 0.5, "test_acc": 0.4, "val_acc_before_cut": 0.7,
           "test_acc_before_cut": 0.6, "test_acc_at_best_val": 0.9}
    old = {"val_acc": 0.7, "test_acc": 0.9, "last_test_acc": 0.6, "val_acc_after_cut": 0.5,
           "test_acc_after_cut": 0.4}
    for record in (new, old):
        assert statefile.accuracy(record, "val") == 0.5
        assert statefile.accuracy(record, "test") == 0.4
        assert statefile.accuracy(record, "val", before_cut=True) == 0.7
        assert statefile.accuracy(record, "test", before_cut=True) == 0.6
    no_cut_old = {"val_acc": 0.7, "test_acc": 0.9, "last_test_acc": 0.6}
    assert statefile.accuracy(no_cut_old, "test") == 0.6
    assert statefile.accuracy(no_cut_old, "test", before_cut=True) is None
    assert statefile.accuracy({"val_acc": float("nan")}, "val") is None
