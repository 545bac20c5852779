# Config validation, wildcard constraints and target functions. Functions only, no rules.
import re

from snakemake.utils import validate


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


def _validate_references():
    """Checks the schema cannot express: names that must refer to each other."""
    from hardmil.models import MODELS

    for name, m in config["methods"].items():
        if m["model"] not in MODELS:
            raise ValueError(
                f"config methods.{name}.model: unknown model {m['model']!r}; valid: {sorted(MODELS)}"
            )
    for name, h in config["hardneg"].items():
        if h["from"] not in config["methods"]:
            raise ValueError(f"config hardneg.{name}.from: {h['from']!r} is not in methods")
    for name, m in config["methods"].items():
        if m.get("hardneg") and m["hardneg"] not in config["hardneg"]:
            raise ValueError(f"config methods.{name}.hardneg: {m['hardneg']!r} is not in hardneg")
    for name, c in config["confounders"].items():
        if c["from"] not in config["methods"]:
            raise ValueError(f"config confounders.{name}.from: {c['from']!r} is not in methods")
    for name, m in config["methods"].items():
        if m.get("confounders") and m["confounders"] not in config["confounders"]:
            raise ValueError(f"config methods.{name}.confounders: {m['confounders']!r} is not in confounders")
    for name, m in config["methods"].items():
        if m.get("teacher") and m["teacher"] not in config["methods"]:
            raise ValueError(f"config methods.{name}.teacher: {m['teacher']!r} is not in methods")
        if m["model"] == "mhim" and not m.get("teacher"):
            raise ValueError(f"config methods.{name}: an MHIM method needs teacher: <trained baseline method>")
    for name, t in config["tables"].items():
        if t["dataset"] not in config["datasets"]:
            raise ValueError(
                f"config tables.{name}.dataset: {t['dataset']!r} is not in datasets"
            )
        for method in t["rows"]:
            if method not in config["methods"]:
                raise ValueError(
                    f"config tables.{name}.rows: method {method!r} is not in methods"
                )
            if not runs_on(method, t["dataset"]):
                raise ValueError(
                    f"config tables.{name}.rows: method {method!r} does not run on {t['dataset']!r}"
                )



def datasets_from(source):
    return [d for d, c in config["datasets"].items() if c["source"] == source]


def one_of(names):
    """A wildcard regex matching exactly ``names`` (and nothing when the list is empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def manifest_path(dataset):
    return config["datasets"][dataset].get("manifest", f"results/manifests/{dataset}.tsv")


def features_dir(dataset, encoder):
    default = "results/features/{dataset}/{encoder}"
    pattern = config["datasets"][dataset].get("features_dir", default)
    return pattern.format(dataset=dataset, encoder=encoder)


def classes(dataset):
    return config["datasets"][dataset]["classes"]


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


def teacher_models(wc):
    """MHIM: the same fold's trained baseline checkpoints that initialise the teacher (none otherwise)."""
    source = config["methods"][wc.method].get("teacher")
    if not source:
        return []
    return job_paths(f"{RUN_DIR}/model.pt", wc, method=source)


def train_jobs(wc):
    """One dict per fold for the train script: where to read, where to write."""
    variant = hardneg_variant(wc.method)
    conf = config["methods"][wc.method].get("confounders")
    teacher = config["methods"][wc.method].get("teacher")
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
        for encoder in dcfg["encoders"]
        for method in config["methods"]
        if runs_on(method, dataset)
        for protocol in config["protocols"]
        for path in method_runs(dataset, encoder, method, protocol, name)
    ]


def table_runs(wildcards):
    t = config["tables"][wildcards.table]
    return [
        path
        for method in t["rows"]
        for protocol in config["protocols"]
        for path in method_runs(t["dataset"], t["encoder"], method, protocol)
    ]


def all_targets():
    tables = expand("results/tables/{table}.{ext}", table=config["tables"], ext=["csv", "md"])
    return tables + all_runs()


_validate_references()


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
