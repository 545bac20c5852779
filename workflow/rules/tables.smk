# Paper-style tables from the per-fold metrics.


def table_runs(wildcards):
    t = config["tables"][wildcards.table]
    if t.get("kind") == "efficiency":
        return [EFFICIENCY.format(dataset=t["dataset"], encoder=t["encoder"], method=m) for m in t["rows"]]
    if t.get("external"):
        return [
            path
            for method in t["rows"]
            for protocol in config["protocols"]
            for path in external_runs(t["external"], t["encoder"], method, protocol)
        ]
    return [
        path
        for method in t["rows"]
        for protocol in config["protocols"]
        for path in method_runs(t["dataset"], t["encoder"], method, protocol)
    ]


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
