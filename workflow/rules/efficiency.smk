# Computational efficiency (MHIM Table 6) measured on the workflow's own data: parameters and seconds per
# epoch from the method's runs, peak memory and one timed epoch from a fresh training pass of fold 0,
# inference slides per second of the trained fold-0 model.
include: "inputs/efficiency.smk"


rule efficiency:
    input:
        unpack(efficiency_inputs),
        metrics=lambda wc: method_runs(wc.dataset, wc.encoder, wc.method, config["protocols"][0]),
    output:
        "results/efficiency/{dataset}/{encoder}/{method}.json",
    log:
        "results/logs/efficiency/{dataset}/{encoder}/{method}.log",
    benchmark:
        "results/benchmarks/efficiency/{dataset}/{encoder}/{method}.tsv"
    conda:
        "../../envs/hardmil.yaml"
    threads: method_job("threads")
    resources:
        mem_mb=job_mem_mb,
        runtime=method_job("runtime"),
        gpu=1,
    params:
        run=train_params,
        job=efficiency_job,
        protocol=config["protocols"][0],
    script:
        "../scripts/efficiency.py"
