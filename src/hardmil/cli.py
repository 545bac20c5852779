"""Command line: ``hardmil models`` lists the registry; ``hardmil check-config`` validates a config file."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def _models(_: argparse.Namespace) -> int:
    from hardmil.models import MODELS

    for name, cls in MODELS.items():
        defaults = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls.config_class))
        print(f"{name:10s} {cls.__module__}.{cls.__name__}  ({defaults})")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from hardmil.config import load_config

    load_config(args.config, args.schema)
    print(f"{args.config}: valid")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hardmil", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list registered models and their defaults").set_defaults(func=_models)
    check = sub.add_parser("check-config", help="validate a workflow config against the schema")
    check.add_argument("config", type=Path)
    check.add_argument("--schema", type=Path, default=Path("workflow/schemas/config.schema.yaml"))
    check.set_defaults(func=_check_config)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
