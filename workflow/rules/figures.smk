# Figures from finished runs: sweeps (MHIM Fig. 5/6), training curves, the MHIM teacher's assessment
# (Fig. 8), mined hard negatives (Li et al. Fig. 3). Heatmaps (Fig. 7): hardmil.report.figures.heatmap_figure.


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
    conda:
        "../../envs/report.yaml"
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
