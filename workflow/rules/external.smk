# Cross-source evaluation (MHIM Table 5): every fold's trained model of the training dataset tested,
# without retraining, on the whole external dataset (config `external`). Grouped like `train`.
include: "inputs/external.smk"


rule external:
    input:
        models=lambda wc: [job["model"] for job in external_jobs(wc)],
        manifest=lambda wc: manifest_path(config["external"][wc.pair]["test"]),
        features=lambda wc: bag_store(config["external"][wc.pair]["test"], wc.encoder),
    output:
        [per_job(f"{EXTERNAL_DIR}/{name}") for name in EXTERNAL_FILES],
    log:
        job_log("results/logs/external/{pair}/{encoder}/{method}/{protocol}"),
    benchmark:
        job_log("results/benchmarks/external/{pair}/{encoder}/{method}/{protocol}", "tsv")
    wildcard_constraints:
        pair=one_of(list(config["external"])),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=30,
    params:
        task=lambda wc: task(config["external"][wc.pair]["test"]),
        classes=lambda wc: classes(config["external"][wc.pair]["test"]),
        device=method_job("device"),
        jobs=external_jobs,
    script:
        "../scripts/external.py"
