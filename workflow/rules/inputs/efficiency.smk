# Input functions of efficiency.smk (functions only: Snakemake's linter wants rules and functions apart).
def efficiency_job(wc):
    """The fold the efficiency job times (first seed, fold 0, first protocol): the train rule's own fold_job, so
    it reads every input that fold's training read."""
    fields = dict(dataset=wc.dataset, encoder=wc.encoder, protocol=config["protocols"][0], seed=SEEDS[0], fold=0)
    return fold_job(wc.method, fields)


def efficiency_inputs(wc):
    job = efficiency_job(wc)
    files = {"splits": job["splits"], "features": bag_store(wc.dataset, wc.encoder),
             "model": f"{job['out_dir']}/model.pt"}
    files.update({k: job[k] for k in FOLD_INPUTS if job[k]})
    return files
