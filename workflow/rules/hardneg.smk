# Li et al. hard-negative mining: the stage-1 model of the same fold picks hard negatives in its
# false-positive training bags (eq. 3) and generates SB / MB / FMB (or random-control) negative bags.


rule hardneg:
    input:
        models=lambda wc: job_paths(
            f"{RUN_DIR}/model.pt", wc, method=config["hardneg"][wc.variant]["from"]
        ),
        splits=lambda wc: job_paths(SPLITS, wc),
        features=lambda wc: bag_store(wc.dataset, wc.encoder),
    output:
        [per_job(f"{HARDNEG_DIR}/{name}") for name in HARDNEG_FILES],
    log:
        job_log("results/logs/hardneg/{dataset}/{encoder}/{variant}/{protocol}"),
    benchmark:
        job_log("results/benchmarks/hardneg/{dataset}/{encoder}/{variant}/{protocol}", "tsv")
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=job_mem_mb,
        runtime=30,
    params:
        classes=lambda wc: classes(wc.dataset),
        cfg=lambda wc: {k: v for k, v in config["hardneg"][wc.variant].items() if k != "from"},
        jobs=lambda wc: stage1_jobs(wc, "hardneg", HARDNEG_DIR),
    script:
        "../scripts/hardneg.py"
