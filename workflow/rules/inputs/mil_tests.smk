# Input functions of mil_tests.smk (functions only: Snakemake's linter wants rules and functions apart).
# --- the MIL-assumption unit tests' report (config mil_tests; datasets with block mil_test, hardmil.data.mil_tests) ---
MIL_TESTS_OUTPUTS = {"md": "results/tables/mil_tests.md", "tsv": "results/tables/mil_tests.tsv",
                     "png": "results/figures/mil_tests.png"}


def _validate_mil_tests():
    c = config.get("mil_tests")
    if not c:
        return
    for d in c["tests"]:
        if d not in config["datasets"] or "mil_test" not in config["datasets"][d]:
            raise ValueError(f"config mil_tests.tests: {d!r} is not a dataset with block mil_test")
    for m in c["rows"]:
        if m not in config["methods"]:
            raise ValueError(f"config mil_tests.rows: method {m!r} is not in methods")
    if c["protocol"] not in config["protocols"]:
        raise ValueError(f"config mil_tests.protocol: {c['protocol']!r} is not in protocols")


_validate_mil_tests()


def mil_tests_targets():
    return list(MIL_TESTS_OUTPUTS.values()) if config.get("mil_tests") else []


def mil_tests_jobs():
    """{test dataset: {method: [{seed, fold, predictions, metrics}]}} for the report script."""
    c = config["mil_tests"]

    def fields(d, m, s, f):
        return dict(dataset=d, encoder=c["encoder"], method=m, protocol=c["protocol"], seed=s, fold=f)

    return {d: {m: [{"seed": s, "fold": f, "predictions": run_file("predictions.tsv", **fields(d, m, s, f)),
                     "metrics": run_file("metrics.json", **fields(d, m, s, f))}
                    for s in SEEDS for f in FOLDS]
                for m in c["rows"]}
            for d in c["tests"]}


def mil_tests_runs(wc):
    return [r[k] for runs in mil_tests_jobs().values() for rs in runs.values() for r in rs
            for k in ("predictions", "metrics")]
