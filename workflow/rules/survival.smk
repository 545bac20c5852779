# Survival demo: a dataset with `simulate:` gets its manifest by drawing survival times for the slides of
# another manifest from a proportional-hazards model driven by tumour burden (hardmil.data.survival_sim).
include: "inputs/survival.smk"


rule simulate_survival:
    input:
        manifest=lambda wc: config["datasets"][wc.dataset]["simulate"]["from"],
    output:
        manifest="results/manifests/{dataset}.tsv",
    log:
        "results/logs/simulate_survival/{dataset}.log",
    benchmark:
        "results/benchmarks/simulate_survival/{dataset}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_simulated()),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        model=lambda wc: {
            k: v for k, v in config["datasets"][wc.dataset]["simulate"].items() if k != "from"
        },
    script:
        "../scripts/simulate_survival.py"
