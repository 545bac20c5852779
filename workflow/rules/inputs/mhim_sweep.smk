# Input functions of mhim_sweep.smk (functions only: Snakemake's linter wants rules and functions apart).
# --- where MHIM-v2 works (config/mhim_sweep.yaml, docs/mhim_sweep.md): witness rate x high-score mask ratio ---
SWEEP_OUTPUTS = {"md": "results/tables/mhim_sweep.md", "tsv": "results/tables/mhim_sweep.tsv",
                 "diagnostics": "results/tables/mhim_sweep_diagnostics.tsv",
                 "figure": "results/figures/mhim_sweep.png"}


def _validate_mhim_sweep():
    s = config.get("mhim_sweep")
    if not s:
        return
    for d in s["regimes"]:
        ds = config["datasets"].get(d, {})
        if ds.get("source") != "simulated" or "simulated" not in ds:
            raise ValueError(f"config mhim_sweep.regimes: {d!r} is not a dataset with source simulated and a "
                             "simulated block (its instance truth and witness_rate)")
    for m in [s["baseline"], *s["methods"]]:
        if m not in config["methods"]:
            raise ValueError(f"config mhim_sweep: method {m!r} is not in methods")
    for m in s["methods"]:
        if config["methods"][m]["model"] != "mhim":
            raise ValueError(f"config mhim_sweep.methods: {m!r} is not an MHIM method (model: mhim)")
    if s["protocol"] not in config["protocols"]:
        raise ValueError(f"config mhim_sweep.protocol: {s['protocol']!r} is not in protocols")


_validate_mhim_sweep()


def mhim_sweep_targets():
    return list(SWEEP_OUTPUTS.values()) if config.get("mhim_sweep") else []


def mhim_sweep_jobs():
    """{regime dataset: {method: [{seed, fold, predictions, metrics, diagnostics}]}} for the report script; the
    diagnostics file is an undeclared output of the same train job as metrics.json (workflow/rules/train.smk)."""
    s = config["mhim_sweep"]
    out = {}
    for d in s["regimes"]:
        out[d] = {}
        for m in [s["baseline"], *s["methods"]]:
            fields = dict(dataset=d, encoder=s["encoder"], method=m, protocol=s["protocol"])
            out[d][m] = [{"seed": k, "fold": f, **{key: run_file(name, **fields, seed=k, fold=f) for key, name in
                                                    (("predictions", "predictions.tsv"), ("metrics", "metrics.json"),
                                                     ("diagnostics", "instance_diagnostics.tsv"))}}
                         for k in SEEDS for f in FOLDS]
    return out


def mhim_sweep_runs(wc):
    """Every fold's predictions and metrics of the baseline and each MHIM method in every regime."""
    return [r[key] for methods in mhim_sweep_jobs().values() for runs in methods.values() for r in runs
            for key in ("predictions", "metrics")]


def mhim_sweep_spec():
    """The report's view of the config block: each regime's label and witness_rate, each method's params."""
    s = config["mhim_sweep"]
    return {**s, "regimes": {d: {"label": label, "witness_rate": config["datasets"][d]["simulated"]["witness_rate"]}
                             for d, label in s["regimes"].items()},
            "methods": {m: config["methods"][m]["params"] for m in s["methods"]}}
