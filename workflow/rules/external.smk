# Cross-source evaluation (MHIM Table 5): every fold's trained model of the training dataset tested,
# without retraining, on the whole external dataset (config `external`). Grouped like `train`.
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


rule external:
    input:
        models=lambda wc: [job["model"] for job in external_jobs(wc)],
        manifest=lambda wc: manifest_path(config["external"][wc.pair]["test"]),
        features=lambda wc: features_dir(config["external"][wc.pair]["test"], wc.encoder),
    output:
        [per_job(f"{EXTERNAL_DIR}/{name}") for name in EXTERNAL_FILES],
    log:
        job_log("results/logs/external/{pair}/{encoder}/{method}/{protocol}"),
    benchmark:
        job_log("results/benchmarks/external/{pair}/{encoder}/{method}/{protocol}", "tsv")
    wildcard_constraints:
        pair=one_of(list(config["external"])),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=30,
    params:
        task=lambda wc: task(config["external"][wc.pair]["test"]),
        classes=lambda wc: classes(config["external"][wc.pair]["test"]),
        device=config["train"]["device"],
        jobs=external_jobs,
    script:
        "../scripts/external.py"
