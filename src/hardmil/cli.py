"""Command line: ``hardmil models`` lists the registry; ``hardmil check-config`` validates a config file;
``hardmil predict`` applies a trained model to new bags."""

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


def _predict(args: argparse.Namespace) -> int:
    from hardmil.eval.predict import predict_bags
    from hardmil.utils import setup_logging

    setup_logging(None)
    rows = predict_bags(model_path=args.model, features=args.features, out=args.out, manifest=args.manifest,
                        attention=args.attention, device=args.device)
    print(f"{args.out}: {len(rows)} slides")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hardmil", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list registered models and their defaults").set_defaults(func=_models)
    check = sub.add_parser("check-config", help="validate a workflow config against the schema")
    check.add_argument("config", type=Path)
    check.add_argument("--schema", type=Path, default=Path("workflow/schemas/config.schema.yaml"))
    check.set_defaults(func=_check_config)
    pred = sub.add_parser("predict", help="apply a trained fold model (model.pt) to a features folder or bag store")
    pred.add_argument("--model", type=Path, required=True, help="a run folder's model.pt")
    pred.add_argument("--features", type=Path, required=True, help="features folder (h5 / .pt) or bag store folder")
    pred.add_argument("--manifest", type=Path, help="TSV with a 'slide' column (default: every slide there)")
    pred.add_argument("--out", type=Path, required=True, help="predictions TSV to write")
    pred.add_argument("--attention", type=Path, help="also write each slide's attention and coords to this h5")
    pred.add_argument("--device", default="auto")
    pred.set_defaults(func=_predict)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
