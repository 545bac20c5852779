# Train and evaluate: one job per (dataset, encoder, method, protocol, seed, fold), or, with
# train.group: method, one job per (dataset, encoder, method, protocol) running every seed and fold.
# Stage-2 methods of Li et al. (methods.<m>.hardneg) also read their fold's generated negative bags.
# MHIM methods (rule train_mhim, the same job) also write teacher_assessment.tsv, the per-epoch rows of the
# teacher's assessment (kept in the training checkpoint, so complete after a resume), read by Fig. 8 figures.


def mhim_methods():
    return [m for m, c in config["methods"].items() if c["model"] == "mhim"]


rule train:
    input:
        splits=lambda wc: job_paths(SPLITS, wc),
        features=lambda wc: features_dir(wc.dataset, wc.encoder),
        extra_bags=hardneg_bags,
        confounders=confounder_files,
        teacher=source_models("teacher"),
        init_from=source_models("init_from"),
    output:
        [per_job(f"{RUN_DIR}/{name}") for name in RUN_FILES],
    wildcard_constraints:
        method=one_of([m for m in config["methods"] if m not in mhim_methods()]),
    log:
        job_log("results/logs/train/{dataset}/{encoder}/{method}/{protocol}"),
    benchmark:
        job_log("results/benchmarks/train/{dataset}/{encoder}/{method}/{protocol}", "tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
        gpu=1,
    params:
        run=train_params,
        jobs=train_jobs,
    script:
        "../scripts/train.py"


use rule train as train_mhim with:
    output:
        [per_job(f"{RUN_DIR}/{name}") for name in RUN_FILES + ["teacher_assessment.tsv"]],
    wildcard_constraints:
        method=one_of(mhim_methods()),
