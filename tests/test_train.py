import json

import pytest
import torch

from hardmil.data.bags import Bag, read_manifest
from hardmil.data.bagset import BagSet
from hardmil.data.splits import make_splits, write_splits
from hardmil.models import build_model
from hardmil.train.loop import TrainConfig, train
from hardmil.train.run import RUN_FILES, run_fold

from .conftest import make_cohort

CLASSES = ["neg", "pos"]


def _tensors(n, seed):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(int(torch.randint(4, 9, (1,), generator=g)), 6, generator=g) for _ in range(n)]
    labels = torch.tensor([i % 2 for i in range(n)])
    for f, y in zip(feats, labels, strict=True):
        f[:2, 0] += 3 * y
    pairs = enumerate(zip(feats, labels, strict=True))
    return BagSet([Bag(f"b{i}", f"b{i}", int(y), f.numpy()) for i, (f, y) in pairs])


class Interrupt(Exception):
    pass


def test_resume_is_bit_identical(tmp_path):
    cfg = TrainConfig(epochs=6, patience=100, seed=5, lr=1e-3)
    tr, sel = _tensors(10, 0), _tensors(6, 1)

    torch.manual_seed(0)
    ref = train(build_model("abmil", in_dim=6), tr, sel, cfg, progress=False)

    def stop_at_3(epoch):
        if epoch == 2:
            raise Interrupt

    ckpt = tmp_path / "checkpoint.pt"
    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        train(build_model("abmil", in_dim=6), tr, sel, cfg, checkpoint=ckpt, digest="d", on_epoch_end=stop_at_3,
              progress=False)
    assert ckpt.exists()
    torch.manual_seed(123)  # a different process state: resume must not depend on it
    resumed = train(build_model("abmil", in_dim=6), tr, sel, cfg, checkpoint=ckpt, digest="d", progress=False)
    assert resumed.history == ref.history
    assert resumed.best_epoch == ref.best_epoch
    for k, v in ref.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k


def test_checkpoint_of_another_config_is_not_used(tmp_path):
    cfg = TrainConfig(epochs=2, patience=100, seed=0)
    tr, sel = _tensors(6, 0), _tensors(4, 1)
    ckpt = tmp_path / "checkpoint.pt"
    train(build_model("abmil", in_dim=6), tr, sel, cfg, checkpoint=ckpt, digest="a", progress=False)
    res = train(build_model("abmil", in_dim=6), tr, sel, TrainConfig(epochs=3, patience=100, seed=0),
                checkpoint=ckpt, digest="b", progress=False)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]


def test_early_stopping_respects_patience():
    cfg = TrainConfig(epochs=50, patience=2, seed=0, selection_metric="loss", lr=0.05)
    res = train(build_model("abmil", in_dim=6), _tensors(6, 0), _tensors(4, 1), cfg, progress=False)
    assert len(res.history) <= res.best_epoch + 1 + 2


def _fold_setup(tmp_path, protocol):
    feats, manifest = make_cohort(tmp_path, n_bags=16, dim=8)
    rows = read_manifest(manifest, CLASSES)
    write_splits(tmp_path / "splits.tsv", make_splits(rows, 4, 0, protocol))
    return feats


@pytest.mark.parametrize("protocol", ["paper", "clean"])
def test_run_fold_writes_run_folder_and_is_deterministic(tmp_path, protocol):
    feats = _fold_setup(tmp_path, protocol)
    kw = dict(splits=tmp_path / "splits.tsv", features_dir=feats, classes=CLASSES, fold=1, protocol=protocol,
              seed=0, model="abmil", model_params={}, train_cfg={"epochs": 4, "patience": 10}, progress=False)
    a = run_fold(out_dir=tmp_path / "a", **kw)
    run_fold(out_dir=tmp_path / "b", **kw)
    for name in RUN_FILES:
        assert (tmp_path / "a" / name).exists()
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    ma.pop("timing"), mb.pop("timing")
    assert ma == mb  # identical except wall-clock timing
    assert (tmp_path / "a" / "predictions.tsv").read_text() == (tmp_path / "b" / "predictions.tsv").read_text()
    assert a["threshold_chosen_on"] == ("test" if protocol == "paper" else "val")
    assert a["n_test"] == 4 and 0.0 <= a["auc"] <= 1.0
    preds = (tmp_path / "a" / "predictions.tsv").read_text().splitlines()
    assert preds[0].split("\t")[:4] == ["slide", "case", "label", "label_index"] and len(preds) == 5


def test_run_fold_names_a_bad_file(tmp_path):
    import numpy as np

    from hardmil.data.bags import write_features

    feats = _fold_setup(tmp_path, "paper")
    write_features(feats / "s005_0.h5", np.ones((5, 7)))
    with pytest.raises(ValueError, match=r"s005_0\.h5: feature dimension 7 != 8"):
        run_fold(splits=tmp_path / "splits.tsv", features_dir=feats, classes=CLASSES, fold=0, protocol="paper",
                 seed=0, model="abmil", model_params={}, train_cfg={"epochs": 1}, out_dir=tmp_path / "r",
                 progress=False)


def test_init_from_copies_only_the_input_layer(tmp_path):
    """MHIM Table 11's "w/ student init." for any model: the input layer comes from the same fold's trained
    model of the same kind, everything else starts fresh; a checkpoint of another model is an error naming it."""
    from hardmil.models.base import init_input_layer

    feats = _fold_setup(tmp_path, "paper")
    kw = dict(splits=tmp_path / "splits.tsv", features_dir=feats, classes=CLASSES, fold=0, protocol="paper",
              seed=0, model_params={}, train_cfg={"epochs": 2}, progress=False)
    run_fold(out_dir=tmp_path / "src", model="dtfd", **kw)
    saved = torch.load(tmp_path / "src" / "model.pt", weights_only=False)
    torch.manual_seed(0)
    fresh = build_model("dtfd", in_dim=8)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert init_input_layer(fresh, saved, "dtfd", 8) == "reduce.0"  # DTFD's projection has no bias
    after = fresh.state_dict()
    assert torch.equal(after["reduce.0.weight"], saved["state_dict"]["reduce.0.weight"])
    assert not torch.equal(after["reduce.0.weight"], before["reduce.0.weight"])
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith("reduce.0."))
    with pytest.raises(ValueError, match="is a 'dtfd' model, this method trains 'abmil'"):
        init_input_layer(build_model("abmil", in_dim=8), saved, "abmil", 8)
    with pytest.raises(ValueError, match="does not fit"):
        init_input_layer(build_model("dtfd", in_dim=8, hidden_dim=16), saved, "dtfd", 8)
    run_fold(out_dir=tmp_path / "init", model="dtfd", init_from=tmp_path / "src" / "model.pt", **kw)
    assert "init_from: " in (tmp_path / "init" / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"model\.pt: cannot initialise the input layer"):
        run_fold(out_dir=tmp_path / "bad", model="abmil", init_from=tmp_path / "src" / "model.pt", **kw)
