# Input functions of simulated.smk (functions only: Snakemake's linter wants rules and functions apart).
# --- the controlled benchmark (source: simulated, workflow/rules/simulated.smk) and its claims report ---
SIM_ENCODER = "provided"  # the generated features are the dataset's own


def simulated_config(dataset):
    """The dataset's generator block: simulated (the bank benchmark) or mil_test (a MIL-assumption unit test)."""
    d = config["datasets"][dataset]
    return d["mil_test"] if "mil_test" in d else d["simulated"]


def is_mil_test(dataset):
    return "mil_test" in config["datasets"][dataset]


def simulated_bank(dataset):
    """(bank dataset, bank encoder) of a simulated dataset."""
    s = simulated_config(dataset)
    bank = s["bank"]
    return bank, s.get("bank_encoder") or config["datasets"][bank]["encoders"][0]


def simulated_inputs(wc):
    if is_mil_test(wc.dataset):
        return {}
    bank, encoder = simulated_bank(wc.dataset)
    from types import SimpleNamespace

    return {"manifest": manifest_path(bank), "features": features_dir(bank, encoder),
            "slides": slide_inputs(SimpleNamespace(dataset=bank))}


def _validate_simulated():
    for d in datasets_from("simulated"):
        where = f"config datasets.{d}"
        if config["datasets"][d]["encoders"] != [SIM_ENCODER]:
            raise ValueError(f"{where}.encoders: a simulated dataset's features are its own: use [{SIM_ENCODER}]")
        if is_mil_test(d):
            continue
        bank, encoder = simulated_bank(d)
        if bank not in config["datasets"] or config["datasets"][bank]["source"] != "synthetic":
            raise ValueError(f"{where}.simulated.bank: {bank!r} must be a dataset with source synthetic "
                             "(its true tumour masks label the bank's patches)")
        if encoder not in config["datasets"][bank]["encoders"]:
            raise ValueError(f"{where}.simulated.bank_encoder: {encoder!r} is not an encoder of dataset {bank!r}")
    claims = config.get("claims")
    if claims:
        for d in claims["regimes"]:
            if d not in config["datasets"] or config["datasets"][d]["source"] != "simulated":
                raise ValueError(f"config claims.regimes: {d!r} is not a dataset with source simulated")
        for m, row in claims["rows"].items():
            for name in (m, row.get("baseline")):
                if name and name not in config["methods"]:
                    raise ValueError(f"config claims.rows.{m}: method {name!r} is not in methods")
            if claims["protocol"] not in config["protocols"]:
                raise ValueError(f"config claims.protocol: {claims['protocol']!r} is not in protocols")


_validate_simulated()


CLAIMS_NAME = config["claims"]["name"] if config.get("claims") else "claims"
CLAIMS_OUTPUTS = {"md": f"results/tables/{CLAIMS_NAME}.md", "tsv": f"results/tables/{CLAIMS_NAME}.tsv",
                  "localisation": f"results/tables/{CLAIMS_NAME}_localisation.tsv",
                  "forest": f"results/figures/{CLAIMS_NAME}_forest.png"}


def claims_targets():
    return list(CLAIMS_OUTPUTS.values()) if config.get("claims") else []


def claims_methods():
    rows = config["claims"]["rows"]
    return list(dict.fromkeys([m for m in rows] + [r["baseline"] for r in rows.values() if r.get("baseline")]))


def claims_runs(wc):
    """Every fold's predictions and model of every claims method and regime, the regimes' truth files."""
    c = config["claims"]
    files = [path for d in c["regimes"] for m in claims_methods()
             for name in ("predictions.tsv", "model.pt") for path in method_runs(d, c["encoder"], m, c["protocol"], name)]
    return files + [f"results/simulated/{d}/truth.h5" for d in c["regimes"]]


def claims_jobs():
    """{regime dataset: {method: [{seed, fold, predictions, model}]}} for the report script."""
    c = config["claims"]
    out = {}
    for d in c["regimes"]:
        out[d] = {}
        for m in claims_methods():
            fields = dict(dataset=d, encoder=c["encoder"], method=m, protocol=c["protocol"])
            out[d][m] = [{"seed": s, "fold": f, "predictions": run_file("predictions.tsv", **fields, seed=s, fold=f),
                          "model": run_file("model.pt", **fields, seed=s, fold=f)} for s in SEEDS for f in FOLDS]
    return out
