# IBMIL stage 2: k-means confounder dictionary from the bag embeddings of the same fold's trained aggregator.


rule confounders:
    input:
        models=lambda wc: job_paths(
            f"{RUN_DIR}/model.pt", wc, method=config["confounders"][wc.variant]["from"]
        ),
        splits=lambda wc: job_paths(SPLITS, wc),
        features=lambda wc: bag_store(wc.dataset, wc.encoder),
    output:
        [per_job(f"{CONF_DIR}/{name}") for name in ["confounders.npy", "summary.json"]],
    log:
        job_log("results/logs/confounders/{dataset}/{encoder}/{variant}/{protocol}"),
    benchmark:
        job_log("results/benchmarks/confounders/{dataset}/{encoder}/{variant}/{protocol}", "tsv")
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=30,
    params:
        classes=lambda wc: classes(wc.dataset),
        clusters=lambda wc: config["confounders"][wc.variant]["clusters"],
        jobs=lambda wc: stage1_jobs(wc, "confounders", CONF_DIR),
    script:
        "../scripts/confounders.py"
