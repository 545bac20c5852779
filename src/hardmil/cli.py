"""Command line: ``hardmil models`` lists the registry; ``hardmil check-config`` runs every check the workflow runs
on a config file before any job (schema, cross-references, slide references, manifests) with the same messages;
``hardmil predict`` applies a trained model to new bags."""

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
    check = sub.add_parser("check-config", help="check a workflow config as the workflow does before any job: schema, "
                           "cross-references, slide references, manifest labels (same messages as snakemake -n)")
    check.add_argument("config", type=Path)
    check.add_argument("--schema", type=Path, default=None, help="another schema (default: the packaged one)")
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
    except OSError as err:  # permission denied, a full disk outside atomic writes ...: one line naming the file
        print(f"error: {err.filename or '(a file)'}: {err.strerror or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
