# Input functions of train.smk (functions only: Snakemake's linter wants rules and functions apart).
def train_inputs(key):
    """Input function: the FOLD_INPUTS file ``key`` of every fold of a train job (none when the method has none)."""
    return lambda wc: list(dict.fromkeys(job[key] for job in train_jobs(wc) if job[key]))
