# Input functions of tables.smk (functions only: Snakemake's linter wants rules and functions apart).
from hardmil.config import table_versus


def table_runs(wildcards):
    t = config["tables"][wildcards.table]
    if t.get("kind") == "efficiency":
        return [EFFICIENCY.format(dataset=t["dataset"], encoder=t["encoder"], method=m) for m in t["rows"]]
    if t.get("external"):
        return [
            path
            for method in t["rows"]
            for protocol in config["protocols"]
            for path in external_runs(t["external"], t["encoder"], method, protocol)
        ]
    return [
        path
        for method in t["rows"]
        for protocol in config["protocols"]
        for path in method_runs(t["dataset"], t["encoder"], method, protocol)
    ]
