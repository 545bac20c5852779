# Paper-style tables from the per-fold metrics.
include: "inputs/tables.smk"


rule table:
    input:
        table_runs,
    output:
        csv=report(
            "results/tables/{table}.csv",
            caption="../report/table.rst",
            category="Tables",
        ),
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    log:
        "results/logs/tables/{table}.log",
    benchmark:
        "results/benchmarks/tables/{table}.tsv"
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        table=lambda wc: config["tables"][wc.table],
        protocols=config["protocols"],
        seeds=SEEDS,
        folds=FOLDS,
    script:
        "../scripts/table.py"
