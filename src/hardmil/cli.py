"""Command line: ``hardmil models`` lists the registry; ``hardmil check-config`` runs every check the workflow runs
on a config file before any job (schema, cross-references, slide references, manifests) with the same messages."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def field_default(f: dataclasses.Field):
    """A config field's default value, whether given as a value or as a factory."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "<required>"


def _models(_: argparse.Namespace) -> int:
    from hardmil.models import MODELS

    for name, cls in MODELS.items():
        defaults = ", ".join(f"{f.name}={field_default(f)!r}" for f in dataclasses.fields(cls.config_class))
        print(f"{name:10s} {cls.__module__}.{cls.__name__}  ({defaults})")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from hardmil.config import load_config

    load_config(args.config, args.schema)  # the checks the workflow runs at start-up
    print(f"{args.config}: valid")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hardmil", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list registered models and their defaults").set_defaults(func=_models)
    check = sub.add_parser("check-config", help="check a workflow config as the workflow does before any job: schema, "
                           "cross-references, slide references, manifest labels (same messages as snakemake -n)")
    check.add_argument("config", type=Path)
    check.add_argument("--schema", type=Path, default=None, help="another schema (default: the packaged one)")
    check.set_defaults(func=_check_config)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
