"""The one config loader, used by the workflow (``workflow/rules/common.smk``) and by ``hardmil check-config``.

:func:`check_config` is everything a config must pass before any job runs, in this order: the JSON schema
(draft 2020-12, shipped with the package as ``hardmil/schemas/config.schema.yaml``), which also fills in its
defaults in place as Snakemake's ``validate`` would, and each method's ``train`` overrides against the ``train``
block's schema (:func:`check_method_train`); :func:`check_references` (names that refer to each other,
each method's model parameters, protocols, figures, cross-source pairs); :func:`check_slide_references`
(encoders and synthetic textures of slide datasets); :func:`check_manifests` (the small input files that
exist already: a ``source: features`` manifest's labels against ``classes``). Every failure is a
``ValueError`` whose message names the key (``config methods.m.teacher: ...``) or, for a bad input file,
the file (:class:`hardmil.utils.InputError`), and the workflow and the command line print the same message.
Relative paths in a config are read relative to the working directory, as the workflow does (run both from
the repository root).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

SLIDE_SOURCES = ("synthetic", "slides", "gdc", "camelyon")  # dataset sources that have slide images
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
# train keys a method cannot override: the workflow lays out every method's jobs the same way (its output paths)
WORKFLOW_TRAIN_KEYS = ("group",)


def load_schema(path: str | os.PathLike | None = None) -> dict:
    """The config schema: the packaged one unless ``path`` names another."""
    return yaml.safe_load(Path(path or SCHEMA_PATH).read_text())


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    from jsonschema import validators

    return validators.extend(validator_class, {"properties": set_defaults})


def _short(value: object, limit: int = 120) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def schema_error_line(err, prefix: tuple = ()) -> str:
    """One line for a jsonschema error: the key path (below ``prefix``, the path of the validated instance) and
    the problem, never the (sub-)schema."""
    where = ".".join(str(p) for p in (*prefix, *err.absolute_path)) or "<top level>"
    if "propertyNames" in err.schema_path:
        from hardmil.data.bags import SAFE_NAME_RULE

        return f"config {where}: name {_short(err.instance)} is not a single safe path component ({SAFE_NAME_RULE})"
    if err.validator in ("oneOf", "anyOf"):  # jsonschema quotes the whole instance and every alternative
        return f"config {where}: {_short(err.instance)} matches none of the allowed forms"
    message = err.message
    if len(message) > 300 or "\n" in message:  # e.g. a whole instance quoted: keep the first part only
        message = " ".join(message.split())[:297] + "..."
    return f"config {where}: {message}"


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Fill defaults into ``config`` and validate it against ``schema`` (default: the packaged schema); raise
    ValueError naming the offending key in one line. The workflow calls this too (through the one loader), so
    Snakemake and the CLI report the same line."""
    from jsonschema import Draft202012Validator

    schema = load_schema() if schema is None else schema
    validator = _with_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ValueError(schema_error_line(errors[0]))
    check_method_train(config, schema)
    return config


def check_method_train(config: dict, schema: dict) -> None:
    """Each method's ``train`` overrides (``methods.<m>.train``) against the schema of the ``train`` block, whose
    keys they override: unknown keys and bad values are errors naming the method and key, as in ``train`` itself.
    Only the keys given are checked (no defaults are filled in: what a method does not set comes from ``train``,
    :func:`method_train`). A key in WORKFLOW_TRAIN_KEYS (``group``) is refused: it holds for every method."""
    from jsonschema import Draft202012Validator

    train_schema = schema.get("properties", {}).get("train")
    if train_schema is None:
        return
    plain = Draft202012Validator(train_schema)  # fills in no defaults
    for name, m in config.get("methods", {}).items():
        overrides = m.get("train", {})
        for key in WORKFLOW_TRAIN_KEYS:
            if key in overrides:
                raise ValueError(f"config methods.{name}.train.{key}: cannot be set per method; train.{key} lays out "
                                 f"the jobs of every method (set it in the train block)")
        errors = sorted(plain.iter_errors(overrides), key=lambda e: [str(p) for p in e.absolute_path])
        if errors:
            raise ValueError(schema_error_line(errors[0], ("methods", name, "train")))


def method_train(config: dict, method: str) -> dict:
    """The train block ``method``'s jobs use: ``train`` with the method's own overrides (``methods.<m>.train``) on
    top, job keys (standardize, threads, mem_mb, runtime) and loop keys alike. The workflow's one source for them."""
    return {**config["train"], **config["methods"][method].get("train", {})}


def check_config(config: dict, schema: dict | None = None) -> dict:
    """Every check a config must pass before any job runs (see the module docstring); fills in the schema's
    defaults in place and returns ``config``."""
    validate_config(config, schema)
    check_references(config)
    check_slide_references(config)
    check_manifests(config)
    return config


def load_config(path: str | os.PathLike, schema_path: str | os.PathLike | None = None) -> dict:
    """Read a config file and run :func:`check_config` on it; errors name the file first."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: config file does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    try:
        return check_config(config, load_schema(schema_path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def synthetic_config(config: dict, dataset: str) -> dict:
    """The synthetic block with the dataset's own overrides (``datasets.<name>.synthetic``) on top."""
    return {**config["synthetic"], **config["datasets"][dataset].get("synthetic", {})}


def check_slide_references(config: dict) -> None:
    """Slide datasets name configured encoders; synthetic cohorts name configured texture assets."""
    datasets = config["datasets"]
    for d, dcfg in datasets.items():
        if dcfg["source"] in SLIDE_SOURCES:
            for e in dcfg["encoders"]:
                if e not in config["encoders"]:
                    raise ValueError(f"config datasets.{d}.encoders: {e!r} is not in encoders "
                                     f"({sorted(config['encoders'])})")
    for d, dcfg in datasets.items():
        if dcfg["source"] == "synthetic":
            cfg = synthetic_config(config, d)
            for a in cfg["normal"] + cfg["tumour"]:
                if a not in config["assets"]:
                    raise ValueError(f"config synthetic (dataset {d}): texture {a!r} is not in assets")


def check_manifests(config: dict) -> None:
    """The manifests a user brings (``source: features`` classification datasets whose manifest exists now):
    every label is one of ``classes`` and no slide is listed twice, as the splits job would find later."""
    from hardmil.data.bags import read_manifest

    for dcfg in config["datasets"].values():
        if dcfg["source"] != "features" or dcfg["task"] != "classification" or "simulate" in dcfg:
            continue
        manifest = dcfg.get("manifest")
        if manifest and Path(manifest).is_file():
            read_manifest(manifest, dcfg["classes"])


def check_references(config: dict) -> None:
    """Checks the schema cannot express: names that must refer to each other, and each method's model
    parameters (built into the model's config, so an unknown or ill-typed one fails before any job runs)."""
    from hardmil.models import MODELS, model_config

    methods = config["methods"]
    for name, m in methods.items():
        if m["model"] not in MODELS:
            raise ValueError(f"config methods.{name}.model: unknown model {m['model']!r}; valid: {sorted(MODELS)}")
        try:
            cfg = model_config(m["model"], **m.get("params", {}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"config methods.{name}.params: {err}") from err
        for key, block in (("hardneg", "hardneg"), ("confounders", "confounders"), ("teacher", "methods"),
                           ("init_from", "methods")):
            if m.get(key) and m[key] not in config[block]:
                raise ValueError(f"config methods.{name}.{key}: {m[key]!r} is not in {block}")
        if m.get("init_from") and methods[m["init_from"]]["model"] != m["model"]:
            raise ValueError(f"config methods.{name}.init_from: {m['init_from']!r} is a "
                             f"{methods[m['init_from']]['model']!r} model, {name!r} a {m['model']!r} model")
        if m["model"] == "mhim":
            untrained = cfg.teacher_init == "none"
            if not m.get("teacher") and not untrained:
                raise ValueError(f"config methods.{name}: an MHIM method needs teacher: <trained baseline method> "
                                 "(or params.teacher.init: none for an explicitly untrained teacher)")
            if m.get("teacher") and untrained:
                raise ValueError(f"config methods.{name}: teacher: {m['teacher']} and params.teacher.init: none "
                                 "contradict each other")
    for block in ("hardneg", "confounders"):
        for name, entry in config[block].items():
            if entry["from"] not in methods:
                raise ValueError(f"config {block}.{name}.from: {entry['from']!r} is not in methods")
    for name, t in config["tables"].items():
        if t["dataset"] not in config["datasets"]:
            raise ValueError(f"config tables.{name}.dataset: {t['dataset']!r} is not in datasets")
        for method in t["rows"]:
            if method not in methods:
                raise ValueError(f"config tables.{name}.rows: method {method!r} is not in methods")
            if t["dataset"] not in methods[method].get("datasets", [t["dataset"]]):
                raise ValueError(f"config tables.{name}.rows: method {method!r} does not run on {t['dataset']!r}")
        check_table_baselines(name, t)
    check_protocols(config)
    check_figures(config)
    check_external(config)


def check_table_baselines(name: str, t: dict) -> None:
    """``tables.<t>.baseline`` and each row's ``versus`` must name another row of the same table."""
    rows = list(t["rows"])
    if t.get("baseline") is not None and t["baseline"] not in rows:
        raise ValueError(f"config tables.{name}.baseline: {t['baseline']!r} is not one of the table's rows {rows}")
    for method, row in t["rows"].items():
        versus = row.get("versus") if isinstance(row, dict) else None
        if versus is None:
            continue
        if versus not in rows:
            raise ValueError(f"config tables.{name}.rows.{method}.versus: {versus!r} is not one of the table's rows "
                             f"{rows}")
        if versus == method:
            raise ValueError(f"config tables.{name}.rows.{method}.versus: a row cannot be compared with itself")


def table_versus(config: dict, name: str) -> dict[str, str | None]:
    """``{method: the row it is compared with}`` for the rows of table ``name`` (None: no comparison).

    In order: the row's ``versus``; none for the table's ``baseline`` itself; an MHIM method: its teacher's
    method if that is a row, else the one row whose model is the baseline model MHIM wraps
    (``params.baseline``); a Li et al. hard-negative method: the method its hard negatives were mined with
    (``hardneg.<h>.from``); a method built on another (``confounders.<c>.from``, ``init_from``) when that is
    a row; else the table's ``baseline``. A table without ``baseline`` compares only rows that name ``versus``."""
    t = config["tables"][name]
    methods = config["methods"]
    rows = list(t["rows"])
    base = t.get("baseline")
    out: dict[str, str | None] = {}
    for method in rows:
        row = t["rows"][method]
        m = methods.get(method, {})
        candidates: list[str | None] = []
        if isinstance(row, dict) and row.get("versus"):
            candidates.append(row["versus"])
        elif method == base:
            candidates.append(None)
        else:
            if m.get("model") == "mhim":
                wrapped = (m.get("params") or {}).get("baseline")
                same = [r for r in rows if r != method and methods.get(r, {}).get("model") == wrapped]
                candidates += [m.get("teacher"), same[0] if len(same) == 1 else None]
            if m.get("hardneg"):
                candidates.append(config.get("hardneg", {}).get(m["hardneg"], {}).get("from"))
            if m.get("confounders"):
                candidates.append(config.get("confounders", {}).get(m["confounders"], {}).get("from"))
            candidates += [m.get("init_from"), base]
        out[method] = next((c for c in candidates if c in rows and c != method), None)
    return out


def method_protocols(config: dict, method: str) -> list[str]:
    """The evaluation protocols ``method`` runs under: ``methods.<m>.protocols``, else every one of ``protocols``."""
    return config["methods"][method].get("protocols", config["protocols"])


def check_protocols(config: dict) -> None:
    """A method restricted to some protocols (``methods.<m>.protocols``) must still exist under every protocol
    that a table, figure, external test, teacher, input-layer, hard-negative or confounder source asks it for."""
    methods = config["methods"]

    def need(method: str, protocols, where: str) -> None:
        if method in methods and (absent := [p for p in protocols if p not in method_protocols(config, method)]):
            raise ValueError(f"config {where}: method {method!r} does not run under protocol(s) {absent} "
                             f"(methods.{method}.protocols: {method_protocols(config, method)})")

    for name, m in methods.items():
        if extra := [p for p in m.get("protocols", []) if p not in config["protocols"]]:
            raise ValueError(f"config methods.{name}.protocols: {extra} not in protocols {config['protocols']}")
        mine = method_protocols(config, name)
        for key in ("teacher", "init_from"):
            if m.get(key):
                need(m[key], mine, f"methods.{name}.{key}")
        for key in ("hardneg", "confounders"):
            if m.get(key) and m[key] in config[key]:
                need(config[key][m[key]]["from"], mine, f"methods.{name}.{key} ({key}.{m[key]}.from)")
    for name, t in config["tables"].items():
        asked = config["protocols"][:1] if t.get("kind") == "efficiency" else config["protocols"]
        for method in t["rows"]:
            need(method, asked, f"tables.{name}.rows")
    for name, e in config.get("external", {}).items():
        for method in e.get("methods", []):
            need(method, config["protocols"], f"external.{name}.methods")
    for name, f in config.get("figures", {}).items():
        asked = [f.get("protocol", "paper")]
        for method in figure_methods(f, config.get("hardneg", {})):
            need(method, asked, f"figures.{name}")


def figure_methods(f: dict, hardneg: dict | None = None) -> list[str]:
    """Every method a ``figures`` entry reads runs of, in order, without repeats: sweep points and baselines,
    ``methods``, or the stage-1 method of the ``variant`` (kinds ``hardneg`` and ``patches``; needs ``hardneg``,
    the config's block). The one place that answers this for the checks and the workflow's figure rules."""
    if f["kind"] in ("hardneg", "patches"):
        v = (hardneg or {}).get(f.get("variant"))
        return [v["from"]] if v else []
    if f["kind"] == "sweep":
        found = [m for p in f.get("panels", {}).values() for s in p["series"].values() for m in s.values()]
        found += [p["baseline"] for p in f.get("panels", {}).values() if p.get("baseline")]
        return list(dict.fromkeys(found))
    return list(f.get("methods") or [])


def _runs_on(config: dict, method: str, dataset: str) -> bool:
    return dataset in config["methods"][method].get("datasets", [dataset])


def shared_encoders(config: dict, name: str) -> list[str]:
    """The encoders both datasets of ``external.<name>`` have (the train dataset's order)."""
    e = config["external"][name]
    test_encoders = config["datasets"][e["test"]]["encoders"]
    return [enc for enc in config["datasets"][e["train"]]["encoders"] if enc in test_encoders]


def check_figures(config: dict) -> None:
    """Each figure's dataset, methods and kind-specific references (heatmap / patch grid: a slide dataset, the
    encoder, the seed, methods that run there; assessment: MHIM methods)."""
    for name, f in config["figures"].items():
        if f["dataset"] not in config["datasets"]:
            raise ValueError(f"config figures.{name}.dataset: {f['dataset']!r} is not in datasets")
        if f["kind"] == "sweep" and "panels" not in f:
            raise ValueError(f"config figures.{name}: a sweep needs panels")
        if f["kind"] in ("curves", "assessment", "heatmap") and not f.get("methods"):
            raise ValueError(f"config figures.{name}: kind {f['kind']!r} needs methods")
        if f["kind"] in ("hardneg", "patches") and f.get("variant") not in config["hardneg"]:
            raise ValueError(f"config figures.{name}.variant: {f.get('variant')!r} is not in hardneg")
        methods = figure_methods(f, config["hardneg"])
        for m in methods:
            if m not in config["methods"]:
                raise ValueError(f"config figures.{name}: method {m!r} is not in methods")
        if f["kind"] == "heatmap":
            _check_slide_figure(config, name, f, f["methods"], "a heatmap")
        if f["kind"] == "patches":
            _check_slide_figure(config, name, f, [config["hardneg"][f["variant"]]["from"]], "a patch grid",
                                " (use kind hardneg to plot mined bags)")
        if f["kind"] == "assessment":
            for m in methods:
                if config["methods"][m]["model"] != "mhim":
                    raise ValueError(f"config figures.{name}: {m!r} is not an MHIM method (no teacher to assess)")


def _check_slide_figure(config: dict, name: str, f: dict, methods: list[str], what: str, hint: str = "") -> None:
    if config["datasets"][f["dataset"]]["source"] not in SLIDE_SOURCES:
        raise ValueError(f"config figures.{name}: {what} needs a slide dataset (source synthetic / slides / "
                         f"gdc / camelyon), {f['dataset']!r} has no slides{hint}")
    if f["encoder"] not in config["datasets"][f["dataset"]]["encoders"]:
        raise ValueError(f"config figures.{name}.encoder: {f['encoder']!r} is not an encoder of {f['dataset']!r}")
    seeds = config["cv"]["seeds"]
    if f.get("seed", seeds[0]) not in seeds:
        raise ValueError(f"config figures.{name}.seed: {f['seed']} is not in cv.seeds {seeds}")
    for m in methods:
        if m in config["methods"] and not _runs_on(config, m, f["dataset"]):
            raise ValueError(f"config figures.{name}: method {m!r} does not run on {f['dataset']!r}")


def check_external(config: dict) -> None:
    """Cross-source entries: both datasets exist, share task, classes and an encoder; methods exist."""
    for name, e in config["external"].items():
        for key in ("train", "test"):
            if e[key] not in config["datasets"]:
                raise ValueError(f"config external.{name}.{key}: {e[key]!r} is not in datasets")
        a, b = config["datasets"][e["train"]], config["datasets"][e["test"]]
        if a["task"] != b["task"] or a.get("classes") != b.get("classes"):
            raise ValueError(f"config external.{name}: {e['train']!r} and {e['test']!r} differ in task or classes")
        if not shared_encoders(config, name):
            raise ValueError(f"config external.{name}: the two datasets share no encoder")
        for m in e.get("methods", []):
            if m not in config["methods"]:
                raise ValueError(f"config external.{name}.methods: {m!r} is not in methods")
    for name, t in config["tables"].items():
        if t.get("external") and t["external"] not in config["external"]:
            raise ValueError(f"config tables.{name}.external: {t['external']!r} is not in external")
