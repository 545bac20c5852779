# What several stages share: the config check, wildcard constraints, path patterns, the per-fold job
# description (train and efficiency), dataset and slide helpers, the final targets. Functions only, no rules.
# A function only one stage uses lives in workflow/rules/inputs/<stage>.smk, which <stage>.smk includes
# (Snakemake's linter asks for rules and functions in separate files).
import re
from functools import partial

from hardmil.checkpoint import RUN_FILES
from hardmil.data.store import STORE_FILES, job_memory_request
from hardmil.config import SLIDE_SOURCES, check_config, check_config_files, method_protocols, method_train
from hardmil.models import MODELS, model_config


# hardmil.config.check_config: the packaged schema (fills in its defaults), cross-references, slide references,
# manifest labels. `hardmil check-config FILE` runs the same function and prints the same message.
# check_config_files: the config files again, through the loader that refuses duplicate keys.
check_config_files(workflow.configfiles)
check_config(config)

RUN_DIR = "results/runs/{dataset}/{encoder}/{method}/{protocol}/seed{seed}/fold{fold}"
HARDNEG_DIR = "results/hardneg/{dataset}/{encoder}/{variant}/{protocol}/seed{seed}/fold{fold}"
HARDNEG_FILES = ["bags.h5", "mined.tsv", "summary.json"]
CONF_DIR = "results/confounders/{dataset}/{encoder}/{variant}/{protocol}/seed{seed}/fold{fold}"
SPLITS = "results/splits/{dataset}/{protocol}/seed{seed}.tsv"
EXTERNAL_DIR = "results/external/{pair}/{encoder}/{method}/{protocol}/seed{seed}/fold{fold}"
EFFICIENCY = "results/efficiency/{dataset}/{encoder}/{method}.json"
PATCH_REPORT = "results/patches/{dataset}/shards/{shard}-of-{n}.tsv"
# train-block keys that configure the job, not the loop (hardmil.train.loop.TrainConfig); a method's own value
# (methods.<m>.train, hardmil.config.method_train) wins for its jobs, except group (one layout for every method)
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


STORE_DIR = "results/stores/{dataset}/{encoder}"


def bag_store(dataset, encoder):
    """The bag store's index (written by the bag_store job), the input of every stage that reads features."""
    return f"{STORE_DIR}/index.json".format(dataset=dataset, encoder=encoder)


def job_mem_mb(wc, input, attempt):
    """Memory (MB) of a job that reads a bag store: hardmil.data.store.job_memory_request (the SLURM override,
    else the method's train.mem_mb (jobs with a {method} wildcard) or train.mem_mb, else the measured model of
    the store's largest bag and the method's models, plus the model's own step estimate: 2DMamba's scan grid)."""
    name = wc.get("method", "")
    method = config["methods"].get(name, {})
    models = [method.get("model", ""), method.get("params", {}).get("baseline", "")]
    configured = method_train(config, name)["mem_mb"] if method else config["train"]["mem_mb"]
    step_mb = None
    if method:
        cfg = model_config(method["model"], **method.get("params", {}))
        step_mb = partial(MODELS[method["model"]].step_memory_mb, cfg)
    return job_memory_request(input.features, models, configured, attempt, step_mb)


def method_job(key):
    """Rule directive function: ``key`` (threads, runtime, device) of the job's {method} from its train block
    with the method's overrides (hardmil.config.method_train)."""
    return lambda wc: method_train(config, wc.method)[key]


def classes(dataset):
    """Class names (classification); survival datasets have none."""
    return config["datasets"][dataset].get("classes", [])


def task(dataset):
    return config["datasets"][dataset]["task"]


# --- job grouping: one fold per job ('fold'), every fold of one seed ('seed') or every seed x fold of a method
# ('method') per job. 'fold' and 'seed' keep finished jobs when seeds are added; 'method' reruns them.
def per_job(pattern):
    """Output paths of one job for a per-fold ``pattern`` (seed and fold stay wildcards or are expanded)."""
    if GROUP == "fold":
        return pattern
    if GROUP == "seed":
        return expand(pattern, fold=FOLDS, allow_missing=True)
    return expand(pattern, seed=SEEDS, fold=FOLDS, allow_missing=True)


def job_log(prefix, ext="log"):
    return {"fold": f"{prefix}/seed{{seed}}/fold{{fold}}.{ext}", "seed": f"{prefix}/seed{{seed}}/all.{ext}",
            "method": f"{prefix}/all.{ext}"}[GROUP]


def fold_fields(wc):
    """The wildcard values of every (seed, fold) one job covers, in order: a dict per fold with ``seed`` and
    ``fold`` set (one fold with train.group: fold, every fold of the seed with 'seed', every seed x fold with
    'method')."""
    fields = {k: v for k, v in wc.items() if k not in ("seed", "fold")}
    if hasattr(wc, "fold"):
        folds = [(int(wc.seed), int(wc.fold))]
    elif hasattr(wc, "seed"):
        folds = [(int(wc.seed), f) for f in FOLDS]
    else:
        folds = [(s, f) for s in SEEDS for f in FOLDS]
    return [fields | {"seed": s, "fold": f} for s, f in folds]


def job_paths(pattern, wc, **extra):
    """Concrete paths of ``pattern`` for every (seed, fold) of the job, in order, without repeats."""
    return list(dict.fromkeys(pattern.format(**(fields | extra)) for fields in fold_fields(wc)))


def run_file(name, **wc):
    return f"{RUN_DIR}/{name}".format(**wc)


# --- one fold's training job: the train rule runs it, the efficiency rule times it again ---
# every input file besides splits and features that a fold's training reads, by its run_fold keyword
FOLD_INPUTS = ("extra_bags", "confounders", "teacher", "init_from")


def fold_job(method, fields):
    """Where one fold of ``method`` reads and writes (``fields``: the fold's wildcard values): splits, out_dir and
    each of FOLD_INPUTS (None when the method does not use it). Both the train and the efficiency rule derive
    their inputs and parameters from it, so the two cannot disagree."""
    m = config["methods"][method]
    fields = fields | {"method": method}
    variant, conf = m.get("hardneg"), m.get("confounders")
    return {
        "seed": fields["seed"],
        "fold": fields["fold"],
        "splits": SPLITS.format(**fields),
        "out_dir": RUN_DIR.format(**fields),
        "extra_bags": f"{HARDNEG_DIR}/bags.h5".format(**fields, variant=variant) if variant else None,
        "confounders": f"{CONF_DIR}/confounders.npy".format(**fields, variant=conf) if conf else None,
        "teacher": run_file("model.pt", **(fields | {"method": m["teacher"]})) if m.get("teacher") else None,
        "init_from": run_file("model.pt", **(fields | {"method": m["init_from"]})) if m.get("init_from") else None,
        "truth": instance_truth(fields["dataset"]),
    }


def instance_truth(dataset):
    """The instance ground truth of a controlled-benchmark dataset (source simulated, not a MIL unit test), read by
    its training jobs for the per-epoch instance diagnostics (hardmil.train.diagnostics); None for others."""
    d = config["datasets"][dataset]
    return f"results/simulated/{dataset}/truth.h5" if d["source"] == "simulated" and "mil_test" not in d else None


def train_jobs(wc):
    """One fold_job per fold of a train job."""
    return [fold_job(wc.method, fields) for fields in fold_fields(wc)]


def train_config(method):
    """The loop's config for ``method`` (hardmil.train.loop.TrainConfig): its train block without the JOB_KEYS."""
    return {k: v for k, v in method_train(config, method).items() if k not in JOB_KEYS}


def train_params(wc):
    """Everything a training job needs besides its input files."""
    return {
        "classes": classes(wc.dataset),
        "model": config["methods"][wc.method]["model"],
        "model_params": config["methods"][wc.method]["params"],
        "train": train_config(wc.method),
        "standardize": method_train(config, wc.method)["standardize"],
        "task": task(wc.dataset),
        "time_bins": config["datasets"][wc.dataset]["time_bins"],
    }


def stage1_jobs(wc, block, out_dir):
    """One dict per fold for a stage (hardneg, confounders) that reads the same fold's model of
    ``config[block][variant]['from']``."""
    source = config[block][wc.variant]["from"]
    return [
        {
            "seed": fields["seed"],
            "fold": fields["fold"],
            "splits": SPLITS.format(**fields),
            "model": run_file("model.pt", **(fields | {"method": source})),
            "out_dir": out_dir.format(**fields),
        }
        for fields in fold_fields(wc)
    ]


# --- the runs a table, figure or target aggregates ---
def method_runs(dataset, encoder, method, protocol, name="metrics.json"):
    """Every fold of every seed of one method: what one table row aggregates."""
    return [
        run_file(name, dataset=dataset, encoder=encoder, method=method, protocol=protocol, seed=s, fold=f)
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


def external_runs(name, encoder, method, protocol, file="metrics.json"):
    return [
        f"{EXTERNAL_DIR}/{file}".format(pair=name, encoder=encoder, method=method, protocol=protocol, seed=s, fold=f)
        for s in SEEDS
        for f in FOLDS
    ]


def all_targets():
    """Every table, figure, run, cross-source run (inputs/external.smk), the claims report (inputs/simulated.smk) and
    the MIL unit tests' report (inputs/mil_tests.smk) and the MHIM-v2 sweep's (inputs/mhim_sweep.smk)."""
    tables = expand("results/tables/{table}.{ext}", table=config["tables"], ext=["csv", "md"])
    figures = expand("results/figures/{figure}.{ext}", figure=config["figures"], ext=["png", "pdf"])
    return tables + figures + all_runs() + all_external() + claims_targets() + mil_tests_targets() + mhim_sweep_targets()


# --- slides: downloaded (gdc, camelyon), synthetic or user-provided; patched and embedded per shard ---
def downloaded_slides(dataset=None):
    """The listing file(s) that mark a dataset's slides as downloaded and verified ([] for other sources)."""
    names = [dataset] if dataset else list(config["datasets"])
    return [
        f"resources/slides/{d}/download.tsv"
        for d in names
        if config["datasets"][d]["source"] in ("gdc", "camelyon")
    ]


def is_slide_dataset(dataset):
    return config["datasets"][dataset]["source"] in SLIDE_SOURCES


def slide_datasets():
    return [d for d in config["datasets"] if is_slide_dataset(d)]


def raw_manifest(dataset):
    """The cohort's slide list: written by the synthetic rule, or a download rule / the user."""
    return config["datasets"][dataset].get("manifest", f"results/manifests/{dataset}.tsv")


def slides_dir(dataset):
    if config["datasets"][dataset]["source"] == "synthetic":
        return f"results/slides/{dataset}"
    return config["datasets"][dataset].get("slides_dir", f"resources/slides/{dataset}")


def slide_inputs(wc):
    """What must exist before a cohort's slides are read: the synthetic cohort's provenance, the download
    listing of a GDC / CAMELYON cohort, else nothing (user-provided slides)."""
    if config["datasets"][wc.dataset]["source"] == "synthetic":
        return [f"results/slides/{wc.dataset}/provenance.json"]
    return downloaded_slides(wc.dataset)


def asset_path(name):
    import os.path

    return f"resources/assets/{name}{os.path.splitext(config['assets'][name]['member'])[1]}"
