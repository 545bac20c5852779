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


# --- issue 26 -------------------------------------------------------------------------------------------------
def _cli(capsys, *argv) -> tuple[int, str]:
    from hardmil.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture
def bags(tmp_path):
    """A tiny cohort (6 bags, 4-d), its manifest and an untrained model.pt for it."""
    from .conftest import make_cohort, untrained_model

    feats, manifest = make_cohort(tmp_path, n_bags=6, dim=4)
    return feats, manifest, untrained_model(tmp_path / "model.pt", 4)


# item 1: an output on an input (or on the other output) is refused, by path, symlink or hard link
@pytest.mark.parametrize("how", ["out=model", "attention=out", "symlink", "hardlink", "inside features"])
def test_predict_refuses_to_write_over_its_inputs(tmp_path, capsys, bags, how):
    feats, manifest, model = bags
    before = model.read_bytes()
    out, att = tmp_path / "p.tsv", None
    if how == "out=model":
        out = model
    elif how == "attention=out":
        att = out
    elif how == "symlink":
        (tmp_path / "link.tsv").symlink_to(model)
        out = tmp_path / "link.tsv"
    elif how == "hardlink":
        os.link(model, tmp_path / "hard.tsv")
        out = tmp_path / "hard.tsv"
    else:
        out = feats / "s000_0.h5"
    argv = ["predict", "--model", str(model), "--features", str(feats), "--out", str(out)]
    code, err = _cli(capsys, *argv, *(["--attention", str(att)] if att else []))
    expected = {"out=model": f"error: {out}: --out is the path given to --model ({model});",
                "attention=out": f"error: {out}: --attention is the path given to --out ({out});",
                "symlink": f"error: {out}: --out is the path given to --model ({model});",
                "hardlink": f"error: {out}: --out is the path given to --model ({model});",
                "inside features": f"error: {out}: --out is inside the path given to --features ({feats});"}[how]
    assert code == 2 and err.startswith(expected) and err.count("\n") == 1, err
    assert model.read_bytes() == before
    assert not (tmp_path / "p.tsv").exists()


def test_predict_writes_atomically_and_leaves_the_old_table_on_failure(tmp_path, capsys, bags, monkeypatch):
    feats, manifest, model = bags
    out = tmp_path / "p.tsv"
    assert _cli(capsys, "predict", "--model", str(model), "--features", str(feats), "--out", str(out))[0] == 0
    before = out.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import csv

    monkeypatch.setattr(csv.DictWriter, "writerows", full)
    code, err = _cli(capsys, "predict", "--model", str(model), "--features", str(feats), "--out", str(out))
    assert code == 2 and err == f"error: {out}: disk full while writing this file (no space left on device); any " \
                                "previous version is untouched\n"
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "manifest.tsv", "model.pt", "p.tsv"]


# item 2: duplicate class names
def test_duplicate_class_names_are_refused():
    cfg = _config(d={"classes": ["neg", "pos", "pos"]})
    with pytest.raises(ValueError) as info:
        validate_config(cfg, copy.deepcopy(SCHEMA))
    assert str(info.value) == "config datasets.d.classes: ['neg', 'pos', 'pos'] has non-unique elements"


# item 3: duplicate YAML keys at any level
@pytest.mark.parametrize("text, line, key, first", [
    ("train:\n  epochs: 3\nmethods:\n  m: {model: abmil}\ntrain:\n  epochs: 1\n", 5, "train", 1),
    ("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 1\n", 4, "epochs", 2),
    ("methods:\n  m:\n    model: abmil\n    params: {dropout: 0.1, dropout: 0.2}\n", 4, "dropout", 4),
])
def test_duplicate_yaml_keys_are_refused_naming_both_lines(tmp_path, capsys, text, line, key, first):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code, err = _cli(capsys, "check-config", str(path))
    assert code == 2
    assert err == f"error: {path}: line {line}: duplicate key {key!r} (first at line {first}); YAML would keep only " \
                  "the last one\n"


# item 4: a store edited after its build; NaN coordinates
def test_a_store_whose_bytes_changed_is_refused_by_predict_naming_the_slide(tmp_path, capsys, bags):
    import numpy as np

    from hardmil.data.store import BagStore, build_store

    feats, manifest, model = bags
    slides = [r["slide"] for r in read_manifest(manifest, ["neg", "pos"])]
    build_store(slides, feats, tmp_path / "store")
    out = tmp_path / "p.tsv"
    argv = ["predict", "--model", str(model), "--features", str(tmp_path / "store"), "--out", str(out)]
    assert _cli(capsys, *argv)[0] == 0
    before = out.read_bytes()
    store = BagStore(tmp_path / "store")
    row = store.slides["s003_0"]["start"] + 1
    arr = np.load(tmp_path / "store/features.npy", mmap_mode="r+")
    arr[row, 2] = np.nan
    arr.flush()
    del arr
    code, err = _cli(capsys, *argv)
    assert code == 2 and err == (f"error: {tmp_path / 'store/features.npy'}: slide s003_0: the stored bytes no longer "
                                 "match the checksum recorded when the bag store was built (edited or damaged); "
                                 "rebuild the store\n")
    assert out.read_bytes() == before
    fresh = BagStore(tmp_path / "store")
    assert fresh.features("s000_0").shape == (fresh.n_rows("s000_0"), 4)  # the other bags still read
    with pytest.raises(InputError, match="slide s003_0: the stored bytes"):
        fresh.slide_stats("s003_0")  # training reads the moments first: checked there too
    with pytest.raises(InputError, match="slide s003_0: the stored bytes"):
        fresh.coords("s003_0")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_coords_are_refused_at_build_time(tmp_path, value):
    import h5py
    import numpy as np

    from hardmil.data.store import build_store

    path = tmp_path / "s0.h5"
    with h5py.File(path, "w") as f:
        f["features"] = np.ones((3, 4), np.float32)
        f["coords"] = np.array([[0, 0], [256, value], [512, 0]], np.float64)
    with pytest.raises(InputError) as info:
        build_store(["s0"], tmp_path, tmp_path / "store")
    assert str(info.value) == f"{path}: 1 instance(s) have NaN or infinite coords"
    assert not (tmp_path / "store").exists()


# item 5: BOM and CRLF
def test_manifest_with_bom_and_crlf_reads_as_the_plain_one(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("slide\tcase\tlabel\ns0\tc0\tneg\ns1\tc1\tpos\n")
    excel = tmp_path / "excel.tsv"
    excel.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    assert read_manifest(excel, ["neg", "pos"]) == read_manifest(plain, ["neg", "pos"])
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("slide\tcase\tlabel\ns\xe90\tc0\tneg\n".encode("latin-1"))
    with pytest.raises(InputError) as info:
        read_manifest(latin, ["neg", "pos"])
    assert str(info.value) == f"{latin}: line 2: manifest is not UTF-8 text; save it as UTF-8"


# item 6: a missing manifest / features folder in a folder with finished results
@pytest.mark.parametrize("key", ["manifest", "features_dir"])
def test_a_missing_input_is_named_even_with_finished_results(tmp_path, capsys, bags, key):
    from hardmil.config import load_config

    feats, manifest, model = bags
    cfg = {"datasets": {"mine": {"source": "features", "classes": ["neg", "pos"], "manifest": str(manifest),
                                 "features_dir": str(feats)}}, "methods": {"abmil": {"model": "abmil"}}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    load_config(path)
    gone = tmp_path / "moved"
    (manifest if key == "manifest" else feats).rename(gone)
    code, err = _cli(capsys, "check-config", str(path))
    missing = manifest if key == "manifest" else feats
    what = "file" if key == "manifest" else "folder"
    assert code == 2 and err == f"error: {path}: config datasets.mine.{key}: {missing} does not exist (or is not a " \
                                f"{what})\n"


# item 7: one slide, two formats
def test_a_slide_in_two_formats_is_refused_naming_both(tmp_path, bags):
    from hardmil.data.bags import check_features_exist, features_path
    from hardmil.data.store import build_store

    feats, manifest, model = bags
    torch.save(torch.ones(3, 4), feats / "s002_0.pt")
    message = (f"{feats / 's002_0.h5'}: slide s002_0 has features in two formats, {feats / 's002_0.h5'} and "
               f"{feats / 's002_0.pt'}; keep one of them")
    with pytest.raises(InputError) as info:
        features_path(feats, "s002_0")
    assert str(info.value) == message
    rows = read_manifest(manifest, ["neg", "pos"])
    with pytest.raises(InputError, match="has features in two formats"):
        check_features_exist(rows, feats, str(manifest))
    with pytest.raises(InputError, match="has features in two formats"):
        build_store([r["slide"] for r in rows], feats, tmp_path / "store")


# item 8: a full disk under results/, the job's own log included
def test_a_full_disk_ends_a_job_with_one_line(tmp_path, capsys):
    from hardmil.utils import DISK_FULL, rule_log

    target = tmp_path / "results/runs/model.pt"
    with pytest.raises(SystemExit) as info, rule_log(tmp_path / "results/logs/train.log"):
        raise InputError(target, DISK_FULL)
    assert info.value.code == 1
    assert capsys.readouterr().err == f"error: {target}: {DISK_FULL}\n"
    assert (tmp_path / "results/logs/train.log").read_text().endswith(f"{target}: {DISK_FULL}\n")
    with pytest.raises(SystemExit), rule_log(tmp_path / "results/logs/store.log"):  # an OSError straight from numpy
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results/stores/features.npy"))
    assert capsys.readouterr().err == f"error: {tmp_path / 'results/stores/features.npy'}: {DISK_FULL}\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device whose writes fail ENOSPC)")
def test_a_log_that_cannot_be_written_is_named_in_one_line(capsys):
    """/dev/full: every write fails with ENOSPC, as a full results/ does for the rule's log."""
    import logging
    import sys

    from tqdm import tqdm

    from hardmil.utils import DISK_FULL, rule_log

    with pytest.raises(SystemExit) as info, rule_log("/dev/full"):
        logging.getLogger("hardmil").info("starting")
        for _ in tqdm(range(3), file=sys.stderr):
            pass
        print("more", file=sys.stderr)
    assert info.value.code == 1
    assert capsys.readouterr().err == f"error: /dev/full: {DISK_FULL}\n"


def test_yaml_merge_keys_may_still_override():
    import tempfile

    from hardmil.config import read_yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write("v1: &v1 {baseline: abmil, mask: 0.1}\nm: {<<: *v1, baseline: transmil}\n")
    assert read_yaml(fh.name)["m"] == {"baseline": "transmil", "mask": 0.1}
    os.unlink(fh.name)


@pytest.mark.workflow
def test_the_workflow_gives_the_check_config_message_for_the_new_checks(tmp_path, capsys, bags):
    """Items 2, 3 and 6 through `snakemake -n` in a folder whose results exist: the same line as check-config."""
    import subprocess
    import sys

    feats, manifest, model = bags
    good = {"datasets": {"mine": {"source": "features", "classes": ["neg", "pos"], "manifest": str(manifest),
                                  "features_dir": str(feats)}}, "methods": {"abmil": {"model": "abmil"}}}
    (tmp_path / "results/stores/mine/provided").mkdir(parents=True)  # finished results stand here
    (tmp_path / "results/stores/mine/provided/index.json").write_text("{}")
    texts = {"duplicate key": yaml.safe_dump(good) + "methods:\n  other: {model: abmil}\n",
             "classes": yaml.safe_dump({**good, "datasets": {"mine": {**good["datasets"]["mine"],
                                                                      "classes": ["neg", "pos", "pos"]}}}),
             "missing": yaml.safe_dump({**good, "datasets": {"mine": {**good["datasets"]["mine"],
                                                                      "manifest": str(tmp_path / "gone.tsv")}}})}
    for case, text in texts.items():
        path = tmp_path / f"{case.replace(' ', '_')}.yaml"
        path.write_text(text)
        code, err = _cli(capsys, "check-config", str(path))
        line = err.strip().removeprefix(f"error: {path}: ")
        assert code == 2 and line != err.strip(), (case, err)
        res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(REPO / "Snakefile"),
                              "-d", str(tmp_path), "--configfile", str(path)], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode != 0 and line in res.stderr + res.stdout, (case, line, res.stderr[-2000:])
        assert "Nothing to be done" not in res.stdout + res.stderr


def test_a_store_build_on_a_full_disk_names_the_file_and_keeps_the_old_store(tmp_path, bags, monkeypatch):
    """Measured with a full 128 kB tmpfs as results/: the memory-mapped arrays were sparse, so the build died
    with an OSError naming no file; their blocks are now allocated up front (posix_fallocate)."""
    from hardmil.data.store import STORE_FILES, build_store

    feats, manifest, model = bags
    slides = [r["slide"] for r in read_manifest(manifest, ["neg", "pos"])]
    build_store(slides, feats, tmp_path / "store")
    before = {f: (tmp_path / "store" / f).read_bytes() for f in STORE_FILES}

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(InputError) as info:
        build_store(slides, feats, tmp_path / "store", force=True)
    assert str(info.value).startswith(f"{tmp_path / 'store.building/features.npy'}: disk full while writing")
    assert {f: (tmp_path / "store" / f).read_bytes() for f in STORE_FILES} == before
    assert not (tmp_path / "store.building").exists()


def test_predict_into_an_unwritable_folder_is_one_line(tmp_path, capsys, bags, monkeypatch):
    import tempfile

    feats, manifest, model = bags

    def denied(*args, dir=None, **kwargs):  # what a folder without write permission gives a non-root user
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    code, err = _cli(capsys, "predict", "--model", str(model), "--features", str(feats), "--out",
                     str(tmp_path / "out" / "p.tsv"))
    assert code == 2 and err == f"error: {tmp_path / 'out'}: Permission denied\n"
