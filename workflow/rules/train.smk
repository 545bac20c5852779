# Train and evaluate: one job per (dataset, encoder, method, protocol, seed, fold), or, with
# train.group: method, one job per (dataset, encoder, method, protocol) running every seed and fold.
# Stage-2 methods of Li et al. (methods.<m>.hardneg) also read their fold's generated negative bags.
# Every run folder holds teacher_assessment.tsv (RUN_FILES): MHIM's per-epoch teacher statistics, kept in the
# training checkpoint so that a resumed run writes it whole; a header-only file for models without a teacher.
# Simulated (controlled-benchmark) datasets also pass their instance truth: the run folder then holds
# instance_diagnostics.tsv (hardmil.train.diagnostics), an undeclared output read by rule mhim_sweep.


include: "inputs/train.smk"


rule train:
    input:
        splits=lambda wc: job_paths(SPLITS, wc),
        features=lambda wc: bag_store(wc.dataset, wc.encoder),
        extra_bags=train_inputs("extra_bags"),
        confounders=train_inputs("confounders"),
        teacher=train_inputs("teacher"),
        init_from=train_inputs("init_from"),
        truth=train_inputs("truth"),
    output:
        [per_job(f"{RUN_DIR}/{name}") for name in RUN_FILES],
    log:
        job_log("results/logs/train/{dataset}/{encoder}/{method}/{protocol}"),
    benchmark:
        job_log("results/benchmarks/train/{dataset}/{encoder}/{method}/{protocol}", "tsv")
    conda:
        "../../envs/hardmil.yaml"
    threads: method_job("threads")
    resources:
        mem_mb=job_mem_mb,
        runtime=method_job("runtime"),
        gpu=1,
    params:
        run=train_params,
        jobs=train_jobs,
    script:
        "../scripts/train.py"
