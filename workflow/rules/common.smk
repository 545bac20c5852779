# Config validation, wildcard constraints and target functions. Functions only, no rules.
import re

from snakemake.utils import validate

from hardmil.config import SLIDE_SOURCES, check_references, method_protocols, shared_encoders


validate(config, "../schemas/config.schema.yaml")

RUN_FILES = ["model.pt", "history.tsv", "predictions.tsv", "metrics.json", "config.yaml"]
RUN_DIR = "results/runs/{dataset}/{encoder}/{method}/{protocol}/seed{seed}/fold{fold}"
HARDNEG_DIR = "results/hardneg/{dataset}/{encoder}/{variant}/{protocol}/seed{seed}/fold{fold}"
HARDNEG_FILES = ["bags.h5", "mined.tsv", "summary.json"]
CONF_DIR = "results/confounders/{dataset}/{encoder}/{variant}/{protocol}/seed{seed}/fold{fold}"
SPLITS = "results/splits/{dataset}/{protocol}/seed{seed}.tsv"
# train-block keys that configure the job, not the loop (hardmil.train.loop.TrainConfig)
JOB_KEYS = ("standardize", "group", "threads", "mem_mb", "runtime")
SEEDS = config["cv"]["seeds"]
FOLDS = list(range(config["cv"]["folds"]))
GROUP = config["train"]["group"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    encoder=r"[A-Za-z0-9_.-]+",
    method=r"[A-Za-z0-9_.-]+",
    protocol="paper|clean",
    seed=r"\d+",
    fold=r"\d+",
    # only configured tables (results/tables/claims.* are rule claims's, simulated.smk)
    table="|".join(re.escape(t) for t in config["tables"]) or "(?!)",


def datasets_from(source):
    return [d for d, c in config["datasets"].items() if c["source"] == source]


def one_of(names):
    """A wildcard regex matching exactly ``names`` (and nothing when the list is empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def manifest_path(dataset):
    if is_slide_dataset(dataset):  # the slides every stage finished (rule bag_manifest)
        return f"results/bags/{dataset}.tsv"
    return config["datasets"][dataset].get("manifest", f"results/manifests/{dataset}.tsv")


def features_dir(dataset, encoder):
    if is_slide_dataset(dataset):  # the training view of the features (rule bag_features)
        return f"results/bags/{dataset}/{encoder}"
    default = "results/features/{dataset}/{encoder}"
    pattern = config["datasets"][dataset].get("features_dir", default)
    return pattern.format(dataset=dataset, encoder=encoder)


def classes(dataset):
    """Class names (classification); survival datasets have none."""
    return config["datasets"][dataset].get("classes", [])


def task(dataset):
    return config["datasets"][dataset]["task"]


def train_config(method):
    """The loop's config for ``method``: the train block, then the method's own overrides."""
    merged = {**config["train"], **config["methods"][method].get("train", {})}
    return {k: v for k, v in merged.items() if k not in JOB_KEYS}


# --- job grouping: one fold per job ('fold') or every seed x fold of a method per job ('method') ---
def per_job(pattern):
    """Output paths of one job for a per-fold ``pattern`` (seed and fold stay wildcards or are expanded)."""
    if GROUP == "fold":
        return pattern
    return expand(pattern, seed=SEEDS, fold=FOLDS, allow_missing=True)


def job_log(prefix, ext="log"):
    return f"{prefix}/seed{{seed}}/fold{{fold}}.{ext}" if GROUP == "fold" else f"{prefix}/all.{ext}"


def fold_ids(wc):
    """The (seed, fold) pairs one job covers."""
    if hasattr(wc, "fold"):
        return [(int(wc.seed), int(wc.fold))]
    return [(s, f) for s in SEEDS for f in FOLDS]


def job_paths(pattern, wc, **extra):
    """Concrete paths of ``pattern`` for every (seed, fold) of the job, in order, without repeats."""
    fields = {k: v for k, v in wc.items() if k not in ("seed", "fold")} | extra
    paths = (pattern.format(**fields, seed=s, fold=f) for s, f in fold_ids(wc))
    return list(dict.fromkeys(paths))


def hardneg_variant(method):
    return config["methods"][method].get("hardneg")


def hardneg_bags(wc):
    """Generated negative bags a stage-2 method trains on (none for other methods)."""
    variant = hardneg_variant(wc.method)
    if not variant:
        return []
    return job_paths(f"{HARDNEG_DIR}/bags.h5", wc, variant=variant)


def confounder_files(wc):
    """The IBMIL confounder dictionaries a method trains with (none for other methods)."""
    variant = config["methods"][wc.method].get("confounders")
    if not variant:
        return []
    return job_paths(f"{CONF_DIR}/confounders.npy", wc, variant=variant)


def source_models(key):
    """Input function: the same fold's trained checkpoints of the method named by ``methods.<m>.<key>``
    (``teacher``: an MHIM teacher; ``init_from``: the input layer), none when the key is not set."""

    def models(wc):
        source = config["methods"][wc.method].get(key)
        return job_paths(f"{RUN_DIR}/model.pt", wc, method=source) if source else []

    return models


def train_jobs(wc):
    """One dict per fold for the train script: where to read, where to write."""
    variant = hardneg_variant(wc.method)
    conf = config["methods"][wc.method].get("confounders")
    teacher = config["methods"][wc.method].get("teacher")
    init_from = config["methods"][wc.method].get("init_from")
    jobs = []
    for s, f in fold_ids(wc):
        fields = {k: v for k, v in wc.items() if k not in ("seed", "fold")} | {"seed": s, "fold": f}
        jobs.append(
            {
                "seed": s,
                "fold": f,
                "splits": SPLITS.format(**fields),
                "out_dir": RUN_DIR.format(**fields),
                "extra_bags": (
                    f"{HARDNEG_DIR}/bags.h5".format(**fields, variant=variant) if variant else None
                ),
                "confounders": (
                    f"{CONF_DIR}/confounders.npy".format(**fields, variant=conf) if conf else None
                ),
                "teacher": run_file("model.pt", **(fields | {"method": teacher})) if teacher else None,
                "init_from": run_file("model.pt", **(fields | {"method": init_from})) if init_from else None,
            }
        )
    return jobs


def stage1_jobs(wc, block, out_dir):
    """One dict per fold for a stage that reads the same fold's model of ``config[block][variant]['from']``."""
    source = config[block][wc.variant]["from"]
    jobs = []
    for s, f in fold_ids(wc):
        fields = {k: v for k, v in wc.items() if k not in ("seed", "fold")} | {"seed": s, "fold": f}
        jobs.append(
            {
                "seed": s,
                "fold": f,
                "splits": SPLITS.format(**fields),
                "model": run_file("model.pt", **fields, method=source),
                "out_dir": out_dir.format(**fields),
            }
        )
    return jobs


def train_params(wc):
    """Everything a training job needs besides its input files."""
    return {
        "classes": classes(wc.dataset),
        "model": config["methods"][wc.method]["model"],
        "model_params": config["methods"][wc.method]["params"],
        "train": train_config(wc.method),
        "standardize": config["train"]["standardize"],
        "task": task(wc.dataset),
        "time_bins": config["datasets"][wc.dataset]["time_bins"],
    }


def run_file(name, **wc):
    return f"{RUN_DIR}/{name}".format(**wc)


def method_runs(dataset, encoder, method, protocol, name="metrics.json"):
    """Every fold of every seed of one method: what one table row aggregates."""
    return [
        run_file(
            name,
            dataset=dataset,
            encoder=encoder,
            method=method,
            protocol=protocol,
            seed=s,
            fold=f,
        )
        for s in SEEDS
        for f in FOLDS
    ]


def runs_on(method, dataset):
    return dataset in config["methods"][method].get("datasets", [dataset])


def all_runs(name="metrics.json"):
    return [
        path
        for dataset, dcfg in config["datasets"].items()
        if not dcfg["external_only"]
        for encoder in dcfg["encoders"]
        for method in config["methods"]
        if runs_on(method, dataset)
        for protocol in method_protocols(config, method)
        for path in method_runs(dataset, encoder, method, protocol, name)
    ]


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


def all_targets():
    tables = expand("results/tables/{table}.{ext}", table=config["tables"], ext=["csv", "md"])
    figures = expand("results/figures/{figure}.{ext}", figure=config["figures"], ext=["png", "pdf"])
    return tables + figures + all_runs() + all_external() + claims_targets()


# --- report: efficiency measurements (Table 6) and figures ---
EFFICIENCY = "results/efficiency/{dataset}/{encoder}/{method}.json"


def efficiency_job(wc):
    """The fold that the efficiency job times (first seed, fold 0, first protocol), as a train_jobs entry."""
    from snakemake.iocontainers import Wildcards

    fields = dict(dataset=wc.dataset, encoder=wc.encoder, method=wc.method, protocol=config["protocols"][0],
                  seed=SEEDS[0], fold=0)
    return train_jobs(Wildcards(fromdict=fields))[0]


def efficiency_inputs(wc):
    job = efficiency_job(wc)
    files = {"splits": job["splits"], "features": features_dir(wc.dataset, wc.encoder),
             "model": f"{job['out_dir']}/model.pt"}
    files.update({k: job[k] for k in ("extra_bags", "confounders", "teacher") if job[k]})
    return files


def figure_inputs(wc):
    """The run files a figure reads (metrics.json stands for a finished run)."""
    f = config["figures"][wc.figure]
    runs = lambda m, name="metrics.json": method_runs(f["dataset"], f["encoder"], m, f["protocol"], name)
    if f["kind"] == "sweep":
        methods = [m for p in f["panels"].values() for s in p["series"].values() for m in s.values()]
        methods += [p["baseline"] for p in f["panels"].values() if p.get("baseline")]
        return [path for m in dict.fromkeys(methods) for path in runs(m)]
    if f["kind"] == "curves":
        return [path for m in f["methods"] for path in runs(m, "history.tsv")]
    if f["kind"] == "assessment":
        return [path for m in f["methods"] for path in runs(m)]
    if f["kind"] == "heatmap":
        return list(heatmap_inputs(wc).values())
    return [
        f"{HARDNEG_DIR}/mined.tsv".format(dataset=f["dataset"], encoder=f["encoder"], variant=f["variant"],
                                          protocol=f["protocol"], seed=s, fold=k)
        for s in SEEDS
        for k in FOLDS
    ]


# --- MHIM Fig. 7 heatmaps (figure kind `heatmap`): each slide under its own test fold's models ---
def heatmap_figures():
    return [n for n, f in config["figures"].items() if f["kind"] == "heatmap"]


def heatmap_seed(f):
    return f.get("seed", SEEDS[0])


def heatmap_models(f):
    """{method: {fold: model.pt}} of the figure's seed (the script picks each slide's test fold)."""
    return {
        m: {k: run_file("model.pt", dataset=f["dataset"], encoder=f["encoder"], method=m, protocol=f["protocol"],
                        seed=heatmap_seed(f), fold=k) for k in FOLDS}
        for m in f["methods"]
    }


def heatmap_inputs(wc, methods=None):
    """Splits of the seed, every fold model of each method, the bags (features + coords done), the slides."""
    f = config["figures"][wc.figure]
    if methods is not None:
        f = {**f, "methods": methods}
    files = {"splits": SPLITS.format(dataset=f["dataset"], protocol=f["protocol"], seed=heatmap_seed(f)),
             "bags": manifest_path(f["dataset"]), "features": features_dir(f["dataset"], f["encoder"])}
    from types import SimpleNamespace

    files.update({f"slides{i}": p for i, p in enumerate(slide_inputs(SimpleNamespace(dataset=f["dataset"])))})
    files.update({f"model_{m}_{k}": p for m, by in heatmap_models(f).items() for k, p in by.items()})
    return files


# --- Li et al. Fig. 3 on slides (figure kind `patches`): the mined hard-negative patches, read from the slides ---
def patch_figures():
    return [n for n, f in config["figures"].items() if f["kind"] == "patches"]


def patch_models(f):
    """{fold: model.pt} of the variant's stage-1 method, the figure's seed."""
    source = config["hardneg"][f["variant"]]["from"]
    return heatmap_models({**f, "methods": [source]})[source]


def patches_inputs(wc):
    """As a heatmap: splits of the seed, every fold model of the stage-1 method, the bags, the slides."""
    return heatmap_inputs(wc, methods=[config["hardneg"][config["figures"][wc.figure]["variant"]]["from"]])


# --- cross-source evaluation (config `external`): trained fold models tested on another dataset ---
EXTERNAL_DIR = "results/external/{pair}/{encoder}/{method}/{protocol}/seed{seed}/fold{fold}"
EXTERNAL_FILES = ["predictions.tsv", "metrics.json"]


def external_methods(name):
    e = config["external"][name]
    return [m for m in e.get("methods", config["methods"]) if runs_on(m, e["train"])]


def external_encoders(name):
    return shared_encoders(config, name)


def external_runs(name, encoder, method, protocol, file="metrics.json"):
    return [
        f"{EXTERNAL_DIR}/{file}".format(
            pair=name, encoder=encoder, method=method, protocol=protocol, seed=s, fold=f
        )
        for s in SEEDS
        for f in FOLDS
    ]


def all_external():
    return [
        path
        for name in config["external"]
        for encoder in external_encoders(name)
        for method in external_methods(name)
        for protocol in method_protocols(config, method)
        for path in external_runs(name, encoder, method, protocol)
    ]


def external_jobs(wc):
    """One dict per fold of an external job: the fold's trained model and where its results go."""
    train = config["external"][wc.pair]["train"]
    jobs = []
    for s, f in fold_ids(wc):
        fields = {k: v for k, v in wc.items() if k not in ("seed", "fold")} | {"seed": s, "fold": f}
        jobs.append(
            {
                "model": run_file("model.pt", **(fields | {"dataset": train})),
                "out_dir": EXTERNAL_DIR.format(**fields),
            }
        )
    return jobs


def datasets_simulated():
    return [d for d, c in config["datasets"].items() if "simulate" in c]


# --- slides downloaded from the GDC or the CAMELYON bucket (workflow/rules/download.smk) ---
def slide_source_config(dataset):
    """The dataset's `gdc` or `camelyon` block (the latter may be left out: schema defaults apply)."""
    d = config["datasets"][dataset]
    return dict(d.get(d["source"]) or {})


def downloaded_slides(dataset=None):
    """The listing file(s) that mark a dataset's slides as downloaded and verified ([] for other sources)."""
    names = [dataset] if dataset else list(config["datasets"])
    return [
        f"resources/slides/{d}/download.tsv"
        for d in names
        if config["datasets"][d]["source"] in ("gdc", "camelyon")
    ]


# --- slide datasets (source synthetic | slides): slides -> patches -> features, per-cohort shard jobs ---
PATCH_REPORT = "results/patches/{dataset}/shards/{shard}-of-{n}.tsv"
FEATURE_REPORT = "results/features/{dataset}/{encoder}/shards/{shard}-of-{n}.tsv"


def is_slide_dataset(dataset):
    return config["datasets"][dataset]["source"] in SLIDE_SOURCES


def slide_datasets():
    return [d for d in config["datasets"] if is_slide_dataset(d)]


def slide_encoders():
    return sorted({e for d in slide_datasets() for e in config["datasets"][d]["encoders"]})


def raw_manifest(dataset):
    """The cohort's slide list: written by the synthetic rule, or a download rule / the user."""
    return config["datasets"][dataset].get("manifest", f"results/manifests/{dataset}.tsv")


def slides_dir(dataset):
    if config["datasets"][dataset]["source"] == "synthetic":
        return f"results/slides/{dataset}"
    return config["datasets"][dataset].get("slides_dir", f"resources/slides/{dataset}")


def n_shards(dataset):
    return config["datasets"][dataset]["shards"]


def patch_reports(dataset):
    n = n_shards(dataset)
    return [PATCH_REPORT.format(dataset=dataset, shard=i, n=n) for i in range(n)]


def feature_reports(dataset, encoder):
    n = n_shards(dataset)
    return [FEATURE_REPORT.format(dataset=dataset, encoder=encoder, shard=i, n=n) for i in range(n)]


def asset_path(name):
    import os.path

    return f"resources/assets/{name}{os.path.splitext(config['assets'][name]['member'])[1]}"


def slide_inputs(wc):
    """What must exist before a cohort's slides are read: the synthetic cohort's provenance, the download
    listing of a GDC / CAMELYON cohort, else nothing (user-provided slides)."""
    if config["datasets"][wc.dataset]["source"] == "synthetic":
        return [f"results/slides/{wc.dataset}/provenance.json"]
    return downloaded_slides(wc.dataset)


def user_weights():
    """Configured encoder weights that no rule makes (the demo's come from fetch_asset under resources/assets)."""
    made = {asset_path(a) for a in config["assets"]}
    return sorted({e["weights"] for e in config["encoders"].values() if e.get("weights")} - made)


def synthetic_config(dataset):
    """The synthetic block with the dataset's own overrides (``datasets.<name>.synthetic``) on top."""
    return {**config["synthetic"], **config["datasets"][dataset].get("synthetic", {})}


def synthetic_textures(kind):
    """Input function: the asset files of the cohort's ``kind`` ('normal' or 'tumour') textures."""
    return lambda wc: [asset_path(a) for a in synthetic_config(wc.dataset)[kind]]


def encoder_weights(wc):
    weights = config["encoders"][wc.encoder].get("weights")
    return [weights] if weights else []


def _validate_slide_references():
    for d in slide_datasets():
        for e in config["datasets"][d]["encoders"]:
            if e not in config["encoders"]:
                raise ValueError(f"config datasets.{d}.encoders: {e!r} is not in encoders ({sorted(config['encoders'])})")
    for d in datasets_from("synthetic"):
        for a in synthetic_config(d)["normal"] + synthetic_config(d)["tumour"]:
            if a not in config["assets"]:
                raise ValueError(f"config synthetic (dataset {d}): texture {a!r} is not in assets")


check_references(config)  # hardmil.config: names that refer to each other, method parameters, figures, external
_validate_slide_references()


# --- the controlled benchmark (source: simulated, workflow/rules/simulated.smk) and its claims report ---
SIM_ENCODER = "provided"  # the generated features are the dataset's own


def simulated_config(dataset):
    return config["datasets"][dataset]["simulated"]


def simulated_bank(dataset):
    """(bank dataset, bank encoder) of a simulated dataset."""
    s = simulated_config(dataset)
    bank = s["bank"]
    return bank, s.get("bank_encoder") or config["datasets"][bank]["encoders"][0]


def simulated_inputs(wc):
    bank, encoder = simulated_bank(wc.dataset)
    from types import SimpleNamespace

    return {"manifest": manifest_path(bank), "features": features_dir(bank, encoder),
            "slides": slide_inputs(SimpleNamespace(dataset=bank))}


def _validate_simulated():
    for d in datasets_from("simulated"):
        where = f"config datasets.{d}"
        if config["datasets"][d]["encoders"] != [SIM_ENCODER]:
            raise ValueError(f"{where}.encoders: a simulated dataset's features are its own: use [{SIM_ENCODER}]")
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


CLAIMS_OUTPUTS = {"md": "results/tables/claims.md", "tsv": "results/tables/claims.tsv",
                  "localisation": "results/tables/claims_localisation.tsv",
                  "forest": "results/figures/claims_forest.png"}


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
