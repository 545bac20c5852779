# Input functions of figures.smk (functions only: Snakemake's linter wants rules and functions apart).
from types import SimpleNamespace

from hardmil.config import figure_methods


def figure_inputs(wc):
    """The run files a figure reads (metrics.json stands for a finished run)."""
    f = config["figures"][wc.figure]
    runs = lambda m, name="metrics.json": method_runs(f["dataset"], f["encoder"], m, f["protocol"], name)
    if f["kind"] in ("sweep", "assessment"):
        return [path for m in figure_methods(f) for path in runs(m)]
    if f["kind"] == "curves":
        return [path for m in figure_methods(f) for path in runs(m, "history.tsv")]
    if f["kind"] == "heatmap":
        return list(heatmap_inputs(wc).values())
    return [
        f"{HARDNEG_DIR}/mined.tsv".format(dataset=f["dataset"], encoder=f["encoder"], variant=f["variant"],
                                          protocol=f["protocol"], seed=s, fold=k)
        for s in SEEDS
        for k in FOLDS
    ]


# --- MHIM Fig. 7 heatmaps (figure kind `heatmap`): each slide under its own test fold's models ---
def heatmap_figures():
    return [n for n, f in config["figures"].items() if f["kind"] == "heatmap"]


def heatmap_seed(f):
    return f.get("seed", SEEDS[0])


def heatmap_models(f):
    """{method: {fold: model.pt}} of the figure's seed (the script picks each slide's test fold)."""
    return {
        m: {k: run_file("model.pt", dataset=f["dataset"], encoder=f["encoder"], method=m, protocol=f["protocol"],
                        seed=heatmap_seed(f), fold=k) for k in FOLDS}
        for m in figure_methods(f, config["hardneg"])
    }


def heatmap_inputs(wc):
    """Splits of the seed, every fold model of each method the figure draws (a patch grid: the hardneg variant's
    stage-1 method), the bags (features + coords done), the slides."""
    f = config["figures"][wc.figure]
    files = {"splits": SPLITS.format(dataset=f["dataset"], protocol=f["protocol"], seed=heatmap_seed(f)),
             "bags": manifest_path(f["dataset"]), "features": bag_store(f["dataset"], f["encoder"])}
    files.update({f"slides{i}": p for i, p in enumerate(slide_inputs(SimpleNamespace(dataset=f["dataset"])))})
    files.update({f"model_{m}_{k}": p for m, by in heatmap_models(f).items() for k, p in by.items()})
    return files


# --- Li et al. Fig. 3 on slides (figure kind `patches`): the mined hard-negative patches, read from the slides ---
def patch_figures():
    return [n for n, f in config["figures"].items() if f["kind"] == "patches"]


def patch_models(f):
    """{fold: model.pt} of the variant's stage-1 method, the figure's seed."""
    return heatmap_models(f)[config["hardneg"][f["variant"]]["from"]]
