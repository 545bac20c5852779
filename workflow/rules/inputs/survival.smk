# Input functions of survival.smk (functions only: Snakemake's linter wants rules and functions apart).
def datasets_simulated():
    return [d for d, c in config["datasets"].items() if "simulate" in c]
