import numpy as np
import pytest
import torch

from hardmil.models.assessment import TeacherAssessment
from hardmil.report.figures import (
    assessment_figure,
    curves_figure,
    heatmap_figure,
    heatmap_inputs,
    localisation_auc,
    mined_figure,
    patch_grid,
    patch_labels,
    patch_tumour_fraction,
    save_figure,
    sweep_figure,
)


def _slide():
    h, w, ds, ps = 64, 96, 16, 256
    yy, xx = np.mgrid[:h, :w]
    thumb = np.full((h, w, 3), 230, np.uint8)
    mask = (xx >= 48) & (yy < 32)  # tumour: top-right quarter
    coords = np.array([(x * ds, y * ds) for y in range(0, h, 16) for x in range(0, w, 16)])
    return thumb, mask, coords, ps, ds


def test_patch_labels_follow_the_mask():
    thumb, mask, coords, ps, ds = _slide()
    lab = patch_labels(coords, ps, ds, mask)
    expected = [(x / ds >= 48 and y / ds < 32) for x, y in coords]
    assert lab.tolist() == [int(e) for e in expected]
    # a patch straddling the tumour border (x from 40 to 56 thumbnail px, tumour from 48): half of it is tumour
    frac = patch_tumour_fraction(np.array([[40 * ds, 0], [40 * ds, 40 * ds], [64 * ds, 0]]), ps, ds, mask)
    assert frac.tolist() == [0.5, 0.0, 1.0]


def test_localisation_auc_perfect_inverse_and_one_class():
    thumb, mask, coords, ps, ds = _slide()
    lab = patch_labels(coords, ps, ds, mask)
    assert localisation_auc(coords, lab + 0.1 * np.arange(len(lab)) / len(lab), ps, ds, mask) == 1.0
    assert localisation_auc(coords, -lab.astype(float), ps, ds, mask) == 0.0
    assert np.isnan(localisation_auc(coords, lab, ps, ds, np.zeros_like(mask)))


def test_heatmap_figure_writes_png_and_pdf_and_rejects_bad_shapes(tmp_path):
    thumb, mask, coords, ps, ds = _slide()
    scores = patch_labels(coords, ps, ds, mask).astype(float)
    fig = heatmap_figure(thumb, coords, {"attention": scores}, patch_size=ps, downsample=ds, mask=mask, title="t")
    assert "localisation AUC: 1.000" in fig.axes[1].get_title()
    save_figure(fig, tmp_path / "h.png", tmp_path / "h.pdf")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "h.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="scores for"):
        heatmap_figure(thumb, coords, {"a": scores[:-1]}, patch_size=ps, downsample=ds)
    with pytest.raises(ValueError, match="differ in size"):
        heatmap_figure(thumb, coords, {"a": scores}, patch_size=ps, downsample=ds, mask=mask[:10])


def test_heatmap_inputs_read_the_file_contract(tmp_path):
    import h5py
    from PIL import Image

    thumb, mask, coords, ps, ds = _slide()
    Image.fromarray(thumb).save(tmp_path / "t.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "m.png")
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("coords", data=coords).attrs["patch_size_level0"] = ps
    got = heatmap_inputs(tmp_path / "t.png", tmp_path / "c.h5", tmp_path / "m.png")
    assert got["patch_size"] == ps and (got["mask"] == mask).all() and (got["coords"] == coords).all()
    Image.fromarray((mask[:10] * 255).astype(np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="bad.png"):
        heatmap_inputs(tmp_path / "t.png", tmp_path / "c.h5", tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        heatmap_inputs(tmp_path / "t.png", tmp_path / "nope.h5")


def test_teacher_assessment_statistics():
    a = TeacherAssessment()
    a.add(torch.ones(20), torch.ones(20), label=0)  # uniform scores
    peaked = torch.zeros(20)
    peaked[3], peaked[7] = 1.0, 1.0
    a.add(peaked, peaked, label=1)
    a.close_epoch(0)
    by = {r["label"]: r for r in a.rows}
    assert by[0]["score_entropy"] == pytest.approx(1.0) and by[0]["top_decile_mass"] == pytest.approx(0.1)
    assert by[1]["top_decile_mass"] == pytest.approx(1.0) and by[1]["attention_overlap"] == 1.0
    assert by[1]["score_entropy"] == pytest.approx(np.log(2) / np.log(20))


def _tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(rows[0]) + "\n" + "".join("\t".join(map(str, r.values())) + "\n" for r in rows))
    return path


def test_run_file_figures(tmp_path):
    hist = [_tsv(tmp_path / f"h{k}.tsv", [{"epoch": e, "lr": 1e-4, "train_loss": 1 / (e + 1), "select_loss": 0.5,
                                           "select_auc": 0.8} for e in range(5 + k)]) for k in range(2)]
    save_figure(curves_figure({"AB-MIL": hist}), tmp_path / "c.png")
    # the thick mean line stops once fewer than half the folds still train (here: 3 folds of 2, 2, 9 epochs)
    short = [_tsv(tmp_path / f"s{k}.tsv", [{"epoch": e, "lr": 1e-4, "train_loss": 1.0, "select_loss": 0.5,
                                            "select_auc": 0.8} for e in range(n)]) for k, n in enumerate((2, 2, 9))]
    mean_line = next(ln for ln in curves_figure({"x": short}).axes[0].lines if ln.get_linewidth() == 2)
    assert list(mean_line.get_xdata()) == [1, 2]
    tsv = [_tsv(tmp_path / "a.tsv", [{"epoch": e, "label": lab, "n_bags": 3, "score_entropy": 0.9,
                                       "top_decile_mass": 0.2, "attention_overlap": 0.5}
                                      for e in range(3) for lab in (0, 1)])]
    fig = assessment_figure({"MHIM-v2": tsv}, classes=["benign", "malignant"])
    assert any("malignant" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    save_figure(fig, tmp_path / "a.png", tmp_path / "a.pdf")
    mined = [_tsv(tmp_path / "m.tsv", [{"slide": "s1", "reason": "false_positive", "prob_not_negative": 0.7,
                                        "n_instances": 30, "n_hard": 4, "hard_indices": "1,2,3,4"}])]
    save_figure(mined_figure(mined), tmp_path / "m.png")
    save_figure(patch_grid([np.zeros((8, 8, 3), np.uint8)] * 3, ["a", "b", "c"], columns=2), tmp_path / "g.png")
    grid = patch_grid([], sections=[("hard negatives", [np.zeros((8, 8, 3), np.uint8)] * 3, ["a", "b", "c"]),
                                    ("contrast", [np.full((8, 8, 3), 255, np.uint8)], ["d"]), ("empty", [], [])],
                      columns=2, footnote="note")
    assert sum(bool(ax.images) for ax in grid.axes) == 4 and {ax.get_title() for ax in grid.axes} >= set("abcd")
    save_figure(grid, tmp_path / "g2.png")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("c.png", "a.png", "m.png", "g.png"))
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        curves_figure({"x": [tmp_path / "missing.tsv"]})
    _tsv(tmp_path / "bad.tsv", [{"epoch": 0, "lr": 1}])
    with pytest.raises(ValueError, match="bad.tsv.*train_loss"):
        curves_figure({"x": [tmp_path / "bad.tsv"]})


def test_sweep_figure_points_are_fold_means(tmp_path):
    fig = sweep_figure({"p": {"xlabel": "mask ratio", "series": {"RSM only": {0.1: [0.7, 0.9], 0.5: [0.6, 0.6]}},
                              "baseline": ("AB-MIL", [0.75, 0.85])}}, title="t")
    line = fig.axes[0].lines[0]
    assert np.allclose(line.get_ydata(), [0.8, 0.6])
    assert fig.axes[0].get_xlabel() == "mask ratio"
    save_figure(fig, tmp_path / "s.png")
    with pytest.raises(ValueError, match="no panels"):
        sweep_figure({})
