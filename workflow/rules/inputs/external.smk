# Input functions of external.smk (functions only: Snakemake's linter wants rules and functions apart).
from hardmil.config import shared_encoders

EXTERNAL_FILES = ["predictions.tsv", "metrics.json"]


def external_methods(name):
    e = config["external"][name]
    return [m for m in e.get("methods", config["methods"]) if runs_on(m, e["train"])]


def all_external():
    return [
        path
        for name in config["external"]
        for encoder in shared_encoders(config, name)
        for method in external_methods(name)
        for protocol in method_protocols(config, method)
        for path in external_runs(name, encoder, method, protocol)
    ]


def external_jobs(wc):
    """One dict per fold of an external job: the fold's trained model and where its results go."""
    train = config["external"][wc.pair]["train"]
    return [
        {"model": run_file("model.pt", **(fields | {"dataset": train})), "out_dir": EXTERNAL_DIR.format(**fields)}
        for fields in fold_fields(wc)
    ]
