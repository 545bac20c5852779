"""Reliability: byte-reproducible and disk-full-aware torch files, umask, safe names, one-line errors."""

import copy
import errno
import os
import stat

import pytest
import torch
import yaml

from hardmil.config import validate_config
from hardmil.data.bags import check_name, read_features, read_manifest
from hardmil.data.splits import read_splits
from hardmil.data.survival import read_survival_manifest
from hardmil.utils import InputError, atomic_path, save_torch, write_text

from .conftest import REPO, write_manifest

SCHEMA = yaml.safe_load((REPO / "src/hardmil/schemas/config.schema.yaml").read_text())
RULE = "(allowed: letters, digits, '.', '_', '-'; not starting with '.'; at most 200 characters)"


def _payload():
    g = torch.Generator().manual_seed(0)
    return {"model": "abmil", "model_config": {"dropout": 0.25}, "state_dict": {"w": torch.randn(4, 3, generator=g)},
            "epoch": 3, "history": [{"epoch": 0, "loss": 0.5}]}


# --- items 7 and 8: save_torch ----------------------------------------------------------------------------
def test_save_torch_is_byte_reproducible_across_paths(tmp_path):
    a, b = tmp_path / "one" / "model.pt", tmp_path / "two" / "other_name.pt"
    save_torch(_payload(), a)
    save_torch(_payload(), b)
    assert a.read_bytes() == b.read_bytes()
    back = torch.load(a, map_location="cpu", weights_only=True)
    assert torch.equal(back["state_dict"]["w"], _payload()["state_dict"]["w"]) and back["epoch"] == 3
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["model.pt"]  # no temporary file left


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")])
def test_save_torch_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, error):
    target = tmp_path / "run" / "model.pt"
    save_torch({"old": torch.zeros(2)}, target)
    before = target.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")  # something was written before the disk filled up
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(InputError) as info:
        save_torch(_payload(), target)
    assert str(info.value).startswith(f"{target}: disk full while writing")
    assert info.value.path == str(target)
    assert target.read_bytes() == before  # the previous version is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]  # no partial temporary file


def test_atomic_path_turns_enospc_into_a_clear_error(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(target), "write_text", full)
    with pytest.raises(InputError, match=r"metrics\.json: disk full while writing"):
        write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_other_errors(tmp_path):
    with pytest.raises(OSError) as info, atomic_path(tmp_path / "x.txt"):
        raise OSError(errno.EACCES, "Permission denied")
    assert not isinstance(info.value, InputError)
    assert list(tmp_path.iterdir()) == []


# --- item 9: umask -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        save_torch({"x": torch.ones(1)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# --- item 4: safe names -------------------------------------------------------------------------------------
BAD_NAMES = [("../../escape", "'../../escape'"), ("x" * 300, repr("x" * 300)), ("a/b", "'a/b'"),
             (".hidden", "'.hidden'"), ("", "''"), ("a b", "'a b'")]


@pytest.mark.parametrize("name, shown", BAD_NAMES)
def test_manifest_rejects_unsafe_slide_names_naming_the_line(tmp_path, name, shown):
    rows = [{"slide": f"s{i}", "case": f"c{i}", "label": "neg" if i % 2 else "pos"} for i in range(5)]
    rows[3]["slide"] = name
    manifest = tmp_path / "manifest.tsv"
    write_manifest(manifest, rows)
    with pytest.raises(InputError) as info:
        read_manifest(manifest, ["neg", "pos"])
    assert str(info.value) == f"{manifest}: line 5: slide name {shown} is not a single safe path component {RULE}"


def test_manifest_rejects_unsafe_case_names(tmp_path):
    manifest = tmp_path / "manifest.tsv"
    write_manifest(manifest, [{"slide": "s0", "case": "../c0", "label": "neg"}])
    with pytest.raises(InputError, match=r"line 2: case name '\.\./c0' is not a single safe path component"):
        read_manifest(manifest, ["neg", "pos"])


def test_safe_names_pass():
    for name in ("TCGA-05-4244-01Z-00-DX1.d4ff32cd", "tumor_001", "a", "x" * 200, "v1.2-b_3"):
        assert check_name(name, "slide", "m.tsv", 2) == name


def test_survival_manifest_and_splits_reject_unsafe_names(tmp_path):
    manifest = tmp_path / "surv.tsv"
    manifest.write_text("slide\tcase\ttime\tevent\ns0\tc0\t10\t1\n../../escape\tc1\t20\t0\n")
    with pytest.raises(InputError, match=r"surv\.tsv: line 3: slide name '\.\./\.\./escape' is not a single safe"):
        read_survival_manifest(manifest)
    splits = tmp_path / "splits.tsv"
    splits.write_text("slide\tcase\tlabel\tfold\trole\ns0\tc0\tneg\t0\ttrain\ns1\t.c1\tpos\t0\ttest\n")
    with pytest.raises(InputError, match=r"splits\.tsv: line 3: case name '\.c1' is not a single safe path"):
        read_splits(splits, 0)


def test_slide_and_download_manifests_reject_unsafe_names(tmp_path):
    from hardmil.data.slide_download import read_rows
    from hardmil.wsi.cohort import read_slide_manifest

    manifest = tmp_path / "slides.tsv"
    manifest.write_text("slide\tcase\tlabel\tfilename\ns0\tc0\tneg\ts0.svs\ns1\tc1\tpos\t../../s1.svs\n")
    with pytest.raises(InputError, match=r"line 3: filename name '\.\./\.\./s1\.svs' is not a single safe"):
        read_rows(manifest, ["slide", "filename"])
    manifest.write_text("slide\tcase\tlabel\ns0\tc0\tneg\nsub/s1\tc1\tpos\n")
    with pytest.raises(InputError, match=r"slides\.tsv: line 3: slide name 'sub/s1' is not a single safe"):
        read_slide_manifest(manifest)


def _config(**datasets):
    return {"datasets": datasets or {"d": {"classes": ["a", "b"]}}, "methods": {"m": {"model": "abmil"}}}


@pytest.mark.parametrize("name", ["../escape", ".d", "a/b", "x" * 201])
def test_config_rejects_unsafe_dataset_names_in_one_line(name):
    with pytest.raises(ValueError) as info:
        validate_config(_config(**{name: {"classes": ["a", "b"]}}), copy.deepcopy(SCHEMA))
    msg = str(info.value)
    assert msg.startswith(f"config datasets: name {name!r}"[:60]) and "not a single safe path component" in msg
    assert "\n" not in msg and len(msg) < 400


# --- item 10: one-line messages ------------------------------------------------------------------------------
@pytest.mark.parametrize("where, value, expected", [
    (("train", "epochs"), 0, "config train.epochs: 0 is less than the minimum of 1"),
    (("cv", "val_fraction"), 1.5, "config cv.val_fraction: 1.5 is greater than or equal to the maximum of 1"),
    (("train", "selection_metric"), "f1", "config train.selection_metric: 'f1' is not one of "
                                           "['auto', 'auc', 'balanced_accuracy', 'loss']"),
    (("train", "lr"), "fast", "config train.lr: 'fast' is not of type 'number'"),
])
def test_schema_errors_are_one_line_without_the_schema(where, value, expected):
    cfg = _config()
    cfg.setdefault(where[0], {})[where[1]] = value
    with pytest.raises(ValueError) as info:
        validate_config(cfg, copy.deepcopy(SCHEMA))
    assert str(info.value) == expected


def test_oneof_error_is_one_line():
    cfg = _config()
    cfg["tables"] = {"t": {"dataset": "d", "rows": {"m": {"label": "x" * 500}}}}
    with pytest.raises(ValueError) as info:
        validate_config(cfg, copy.deepcopy(SCHEMA))
    msg = str(info.value)
    assert msg.startswith("config tables.t.rows.m: ") and "\n" not in msg and len(msg) < 300


def test_pt_dict_without_features_names_its_keys(tmp_path):
    path = tmp_path / "s0.pt"
    torch.save({"feats": torch.zeros(3, 4), "coords": torch.zeros(3, 2)}, path)
    with pytest.raises(InputError) as info:
        read_features(path)
    assert str(info.value) == f"{path}: '.pt' dict has no 'features' key (keys: ['coords', 'feats'])"
    torch.save({"features": torch.ones(3, 4)}, path)
    assert read_features(path)[0].shape == (3, 4)


# --- items 3 and 7: a resumed MHIM fold writes the same files as an uninterrupted one --------------------------
class _Killed(Exception):
    pass


def test_resumed_mhim_fold_keeps_teacher_assessment_and_model_bytes(tmp_path):
    from hardmil.data.splits import make_splits, write_splits
    from hardmil.train.run import run_fold

    from .conftest import make_cohort

    feats, manifest = make_cohort(tmp_path, n_bags=12, dim=6)
    write_splits(tmp_path / "splits.tsv", make_splits(read_manifest(manifest, ["neg", "pos"]), 3, 0, "paper"))
    kw = dict(splits=tmp_path / "splits.tsv", features_dir=feats, classes=["neg", "pos"], fold=0, protocol="paper",
              seed=0, progress=False)
    run_fold(out_dir=tmp_path / "teacher", model="abmil", model_params={}, train_cfg={"epochs": 2, "patience": 9}, **kw)
    assert (tmp_path / "teacher/teacher_assessment.tsv").read_text().splitlines() == [
        "epoch\tlabel\tn_bags\tscore_entropy\ttop_decile_mass\tattention_overlap"]  # header only without a teacher
    mhim = dict(model="mhim", model_params={"mask_high": 0.1, "rsm_ratio": 0.3}, teacher=tmp_path / "teacher/model.pt",
                train_cfg={"epochs": 5, "patience": 9}, **kw)
    run_fold(out_dir=tmp_path / "whole", **mhim)

    def kill_at_3(epoch):
        if epoch == 3:
            raise _Killed

    with pytest.raises(_Killed):
        run_fold(out_dir=tmp_path / "cut", on_epoch_end=kill_at_3, **mhim)
    assert (tmp_path / "cut/checkpoint.pt").exists() and not (tmp_path / "cut/model.pt").exists()
    run_fold(out_dir=tmp_path / "cut", **mhim)  # resumes at epoch 3 from the checkpoint
    whole, cut = (tmp_path / "whole/teacher_assessment.tsv").read_text(), (tmp_path / "cut/teacher_assessment.tsv")
    assert len(whole.splitlines()) == 1 + 5 * 2 and cut.read_text() == whole
    for name in ("model.pt", "history.tsv", "predictions.tsv"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_an_hdf5_write_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import h5py
    import numpy as np

    from hardmil.data.bags import write_features

    def full(self, name, data=None, **kwargs):  # what h5py raises when HDF5 cannot write (errno not set)
        raise OSError("Can't write data (file write failed: time = Fri Nov 27, filename = 'x', file descriptor = 5, "
                      "errno = 28, error message = 'No space left on device', buf = 0x1, total write size = 8)")

    monkeypatch.setattr(h5py.File, "create_dataset", full)
    with pytest.raises(InputError, match=r"s0\.h5: disk full while writing"):
        write_features(tmp_path / "s0.h5", np.zeros((2, 3)))
    assert list(tmp_path.iterdir()) == []
