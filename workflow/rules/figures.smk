# Figures from finished runs: sweeps (MHIM Fig. 5/6), training curves, the MHIM teacher's assessment
# (Fig. 8), mined hard negatives (Li et al. Fig. 3); heatmaps (Fig. 7, rule heatmap_figure) over slides with a
# localisation AUC table; grids of mined hard-negative patches read from the slides (rule patches_figure).
include: "inputs/figures.smk"


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
        assessment=lambda wc: {
            m: method_runs(
                config["figures"][wc.figure]["dataset"],
                config["figures"][wc.figure]["encoder"],
                m,
                config["figures"][wc.figure]["protocol"],
                "teacher_assessment.tsv",
            )
            for m in config["figures"][wc.figure].get("methods", {})
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
