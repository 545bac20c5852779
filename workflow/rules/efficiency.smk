# Computational efficiency (MHIM Table 6) measured on the workflow's own data: parameters and seconds per
# epoch from the method's runs, peak memory and one timed epoch from a fresh training pass of fold 0,
# inference slides per second of the trained fold-0 model.


def efficiency_job(wc):
    """The fold the efficiency job times (first seed, fold 0, first protocol): the train rule's own fold_job, so
    it reads every input that fold's training read."""
    fields = dict(dataset=wc.dataset, encoder=wc.encoder, protocol=config["protocols"][0], seed=SEEDS[0], fold=0)
    return fold_job(wc.method, fields)


def efficiency_inputs(wc):
    job = efficiency_job(wc)
    files = {"splits": job["splits"], "features": features_dir(wc.dataset, wc.encoder),
             "model": f"{job['out_dir']}/model.pt"}
    files.update({k: job[k] for k in FOLD_INPUTS if job[k]})
    return files


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
    threads: config["train"]["threads"]
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
        gpu=1,
    params:
        run=train_params,
        job=efficiency_job,
        protocol=config["protocols"][0],
    script:
        "../scripts/efficiency.py"
