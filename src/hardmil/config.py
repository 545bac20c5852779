"""Config validation outside Snakemake, with the same schema and the same default filling.

Snakemake's ``validate(config, schema)`` fills defaults from the schema; this does the same with
jsonschema (draft 2020-12) so that tests and the CLI see exactly what the workflow sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml


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


def validate_config(config: dict, schema: dict) -> dict:
    """Fill defaults into ``config`` and validate it; raise ValueError naming the offending key."""
    from jsonschema import Draft202012Validator

    validator = _with_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise ValueError(f"config {where}: {err.message}")
    return config


def load_config(path: str | os.PathLike, schema_path: str | os.PathLike) -> dict:
    config = yaml.safe_load(Path(path).read_text()) or {}
    schema = yaml.safe_load(Path(schema_path).read_text())
    try:
        return validate_config(config, schema)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
