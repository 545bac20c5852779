# Paper-style tables from the per-fold metrics.
include: "inputs/tables.smk"


rule table:
    input:
        runs=table_runs,
        # the paired Δ columns read each run's out-of-fold predictions (none for an efficiency table)
        predictions=lambda wc: (
            []
            if config["tables"][wc.table].get("kind") == "efficiency"
            else [
                p.replace("metrics.json", "predictions.tsv") for p in table_runs(wc)
            ]
        ),
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
        versus=lambda wc: table_versus(config, wc.table),
        protocols=config["protocols"],
        seeds=SEEDS,
        folds=FOLDS,
    script:
        "../scripts/table.py"
