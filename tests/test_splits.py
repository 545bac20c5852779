from collections import Counter

import pytest

from hardmil.data.splits import check_splits, make_splits, read_splits, write_splits
from hardmil.utils import InputError


def _rows(n_cases=23, slides_per_case=2, pos_every=3):
    return [{"slide": f"s{c}_{j}", "case": f"c{c}", "label": "pos" if c % pos_every == 0 else "neg"}
            for c in range(n_cases) for j in range(slides_per_case)]


@pytest.mark.parametrize("protocol", ["paper", "clean"])
def test_split_invariants(protocol):
    rows = _rows()
    out = make_splits(rows, folds=4, seed=3, protocol=protocol, val_fraction=0.25)
    assert len(out) == 4 * len(rows)
    test_fold_of_case = {}
    for r in out:
        if r["role"] == "test":
            assert test_fold_of_case.setdefault(r["case"], r["fold"]) == r["fold"]  # no case in two folds
    assert len(test_fold_of_case) == 23
    n_pos = Counter(r["label"] for r in rows if r["slide"].endswith("_0"))["pos"]
    for k in range(4):
        fold = [r for r in out if r["fold"] == k]
        roles = {r["case"]: r["role"] for r in fold}
        # slides of one case share a role
        assert all(roles[r["case"]] == r["role"] for r in fold)
        test_cases = {c for c, role in roles.items() if role == "test"}
        val_cases = {c for c, role in roles.items() if role == "val"}
        assert not test_cases & val_cases
        # stratification: each test fold holds floor or ceil of pos/folds positive cases
        pos_in_test = sum(1 for c in test_cases if int(c[1:]) % 3 == 0)
        assert pos_in_test in (n_pos // 4, n_pos // 4 + 1)
        if protocol == "clean":
            assert val_cases and {r["label"] for r in fold if r["role"] == "val"} == {"pos", "neg"}
        else:
            assert not val_cases


def test_same_seed_same_splits_and_test_folds_shared_by_protocols():
    rows = _rows()
    a = make_splits(rows, 4, 7, "paper")
    assert a == make_splits(rows, 4, 7, "paper")
    assert a != make_splits(rows, 4, 8, "paper")
    clean = make_splits(rows, 4, 7, "clean")
    tests = lambda s: {(r["slide"], r["fold"]) for r in s if r["role"] == "test"}  # noqa: E731
    assert tests(a) == tests(clean)


def test_round_trip(tmp_path):
    out = make_splits(_rows(), 3, 0, "clean")
    write_splits(tmp_path / "s.tsv", out)
    fold1 = read_splits(tmp_path / "s.tsv", 1)
    assert sum(len(v) for v in fold1.values()) == 46
    assert {r["role"] for r in fold1["val"]} == {"val"}


def test_errors_name_the_source():
    with pytest.raises(InputError, match="m.tsv: only one class"):
        make_splits([{"slide": "a", "case": "a", "label": "x"}] * 4, 2, 0, "paper", source="m.tsv")
    bad = _rows() + [{"slide": "z", "case": "c0", "label": "neg"}]  # c0 is pos
    with pytest.raises(InputError, match="case c0 has slides with different labels"):
        make_splits(bad, 4, 0, "paper", source="m.tsv")
    with pytest.raises(InputError, match="too small"):
        make_splits(_rows(n_cases=6), 4, 0, "paper")


def test_check_splits_catches_a_case_tested_twice():
    out = make_splits(_rows(), 4, 0, "paper")
    victim = next(r for r in out if r["fold"] == 1 and r["role"] == "train")
    for r in out:
        if r["case"] == victim["case"] and r["fold"] == 1:
            r["role"] = "test"
    with pytest.raises(InputError, match="exactly one test fold"):
        check_splits(out, "paper")
