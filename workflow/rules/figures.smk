# Figures from finished runs: sweeps (MHIM Fig. 5/6), training curves, the MHIM teacher's assessment
# (Fig. 8), mined hard negatives (Li et al. Fig. 3); heatmaps (Fig. 7, rule heatmap_figure) over slides with a
# localisation AUC table; grids of mined hard-negative patches read from the slides (rule patches_figure).
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
             "bags": manifest_path(f["dataset"]), "features": features_dir(f["dataset"], f["encoder"])}
    files.update({f"slides{i}": p for i, p in enumerate(slide_inputs(SimpleNamespace(dataset=f["dataset"])))})
    files.update({f"model_{m}_{k}": p for m, by in heatmap_models(f).items() for k, p in by.items()})
    return files


# --- Li et al. Fig. 3 on slides (figure kind `patches`): the mined hard-negative patches, read from the slides ---
def patch_figures():
    return [n for n, f in config["figures"].items() if f["kind"] == "patches"]


def patch_models(f):
    """{fold: model.pt} of the variant's stage-1 method, the figure's seed."""
    return heatmap_models(f)[config["hardneg"][f["variant"]]["from"]]


rule figure:
    input:
        figure_inputs,
    output:
        png=report(
            "results/figures/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
        ),
        pdf="results/figures/{figure}.pdf",
    log:
        "results/logs/figures/{figure}.log",
    benchmark:
        "results/benchmarks/figures/{figure}.tsv"
    wildcard_constraints:
        figure=one_of([n for n in config["figures"] if n not in heatmap_figures() + patch_figures()]),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        figure=lambda wc: config["figures"][wc.figure],
        classes=lambda wc: classes(config["figures"][wc.figure]["dataset"]),
        runs=lambda wc: {
            m: method_runs(
                config["figures"][wc.figure]["dataset"],
                config["figures"][wc.figure]["encoder"],
                m,
                config["figures"][wc.figure]["protocol"],
            )
            for m in config["methods"]
        },
    script:
        "../scripts/figure.py"


rule heatmap_figure:
    input:
        unpack(heatmap_inputs),
    output:
        png=report(
            "results/figures/{figure}.png",
            caption="../report/heatmap.rst",
            category="Figures",
        ),
        pdf="results/figures/{figure}.pdf",
        tsv=report(
            "results/figures/{figure}.tsv",
            caption="../report/heatmap.rst",
            category="Figures",
        ),
    log:
        "results/logs/figures/{figure}.log",
    benchmark:
        "results/benchmarks/figures/{figure}.tsv"
    wildcard_constraints:
        figure=one_of(heatmap_figures()),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        figure=lambda wc: config["figures"][wc.figure],
        classes=lambda wc: classes(config["figures"][wc.figure]["dataset"]),
        models=lambda wc: heatmap_models(config["figures"][wc.figure]),
        seed=lambda wc: heatmap_seed(config["figures"][wc.figure]),
        coords_dir=lambda wc: f"results/patches/{config['figures'][wc.figure]['dataset']}",
        slides_dir=lambda wc: slides_dir(config["figures"][wc.figure]["dataset"]),
    script:
        "../scripts/heatmap.py"


rule patches_figure:
    input:
        unpack(heatmap_inputs),
    output:
        png=report(
            "results/figures/{figure}.png",
            caption="../report/patches.rst",
            category="Figures",
        ),
        pdf="results/figures/{figure}.pdf",
        tsv=report(
            "results/figures/{figure}.tsv",
            caption="../report/patches.rst",
            category="Figures",
        ),
    log:
        "results/logs/figures/{figure}.log",
    benchmark:
        "results/benchmarks/figures/{figure}.tsv"
    wildcard_constraints:
        figure=one_of(patch_figures()),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        figure=lambda wc: config["figures"][wc.figure],
        hardneg=lambda wc: config["hardneg"][config["figures"][wc.figure]["variant"]],
        classes=lambda wc: classes(config["figures"][wc.figure]["dataset"]),
        models=lambda wc: patch_models(config["figures"][wc.figure]),
        seed=lambda wc: heatmap_seed(config["figures"][wc.figure]),
        coords_dir=lambda wc: f"results/patches/{config['figures'][wc.figure]['dataset']}",
        slides_dir=lambda wc: slides_dir(config["figures"][wc.figure]["dataset"]),
    script:
        "../scripts/patch_grid.py"
