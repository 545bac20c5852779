"""Config validation outside Snakemake, with the same schema and the same default filling.

Snakemake's ``validate(config, schema)`` fills defaults from the schema; this does the same with
jsonschema (draft 2020-12) so that tests and the CLI see exactly what the workflow sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

SLIDE_SOURCES = ("synthetic", "slides", "gdc", "camelyon")  # dataset sources that have slide images


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


def schema_error_line(err) -> str:
    """One line for a jsonschema error: the key path and the problem, never the (sub-)schema."""
    where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if "propertyNames" in err.schema_path:
        from hardmil.data.bags import SAFE_NAME_RULE

        return f"config {where}: name {_short(err.instance)} is not a single safe path component ({SAFE_NAME_RULE})"
    if err.validator in ("oneOf", "anyOf"):  # jsonschema quotes the whole instance and every alternative
        return f"config {where}: {_short(err.instance)} matches none of the allowed forms"
    message = err.message
    if len(message) > 300 or "\n" in message:  # e.g. a whole instance quoted: keep the first part only
        message = " ".join(message.split())[:297] + "..."
    return f"config {where}: {message}"


def validate_config(config: dict, schema: dict) -> dict:
    """Fill defaults into ``config`` and validate it; raise ValueError naming the offending key in one line.

    The workflow (``workflow/rules/common.smk``) calls this too, so Snakemake and the CLI report the same line."""
    from jsonschema import Draft202012Validator

    validator = _with_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ValueError(schema_error_line(errors[0]))
    return config


def load_config(path: str | os.PathLike, schema_path: str | os.PathLike) -> dict:
    config = yaml.safe_load(Path(path).read_text()) or {}
    schema = yaml.safe_load(Path(schema_path).read_text())
    try:
        return validate_config(config, schema)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


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
    check_protocols(config)
    check_figures(config)
    check_external(config)


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
    """Every method a ``figures`` entry reads runs of: sweep points and baselines, ``methods``, or the
    stage-1 method of the ``variant`` (kinds ``hardneg`` and ``patches``)."""
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
        if f["kind"] == "sweep":
            if "panels" not in f:
                raise ValueError(f"config figures.{name}: a sweep needs panels")
            methods = [m for p in f["panels"].values() for s in p["series"].values() for m in s.values()]
            methods += [p["baseline"] for p in f["panels"].values() if p.get("baseline")]
        elif f["kind"] in ("curves", "assessment", "heatmap"):
            methods = list(f.get("methods") or [])
            if not methods:
                raise ValueError(f"config figures.{name}: kind {f['kind']!r} needs methods")
        else:
            if f.get("variant") not in config["hardneg"]:
                raise ValueError(f"config figures.{name}.variant: {f.get('variant')!r} is not in hardneg")
            methods = []
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
