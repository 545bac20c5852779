"""Every numeric parameter has a declared valid range: model configs (``param(...)``) and the workflow schema."""

import copy
import dataclasses
import types
import typing

import pytest
import yaml

from hardmil.config import validate_config
from hardmil.models import MODELS, build_model
from hardmil.models.base import field_range

from .conftest import REPO

SCHEMA = yaml.safe_load((REPO / "src/hardmil/schemas/config.schema.yaml").read_text())
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const")


def _numeric(tp) -> bool:
    """int / float, or an Optional / Union holding one (bool is not a number here)."""
    if tp in (int, float):
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_numeric(a) for a in typing.get_args(tp))
    return False


def _numeric_fields(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name])]


def test_numeric_field_detection():
    @dataclasses.dataclass
    class C:
        a: int = 1
        b: float | None = None
        c: bool = True
        d: str = "x"

    assert _numeric_fields(C) == ["a", "b"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_numeric_model_field_declares_a_range(model):
    cls = MODELS[model].config_class
    fields = _numeric_fields(cls)
    assert fields, f"model {model!r}: no numeric config field found (is config_class a dataclass?)"
    undeclared = [f.name for f in dataclasses.fields(cls) if f.name in fields and field_range(f) is None]
    assert not undeclared, f"model {model!r}: numeric config fields without param(..., ge/gt/le/lt): {undeclared}"


def _numeric_schemas(node, path="config"):
    """(path, sub-schema) for every schema node that accepts a number."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _numeric_schemas(item, f"{path}[{i}]")
        return
    if not isinstance(node, dict):
        return
    types_ = node.get("type")
    types_ = types_ if isinstance(types_, list) else [types_]
    if "integer" in types_ or "number" in types_:
        yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _numeric_schemas(sub, f"{path}.{key}")
    for key in ("additionalProperties", "items", "propertyNames", "if", "then", "else"):
        if isinstance(node.get(key), dict):
            yield from _numeric_schemas(node[key], f"{path}.<{key}>" if key != "items" else f"{path}[]")
    for key in ("oneOf", "anyOf", "allOf"):
        yield from _numeric_schemas(node.get(key, []), f"{path}.<{key}>")
    for key, sub in node.get("patternProperties", {}).items():
        yield from _numeric_schemas(sub, f"{path}.<{key}>")


def test_schema_walker_finds_the_numbers():
    found = dict(_numeric_schemas(SCHEMA))
    assert "config.train.epochs" in found and "config.cv.seeds[]" in found
    assert "config.datasets.<additionalProperties>.simulate.beta" in found
    assert len(found) > 50


def test_every_numeric_schema_key_has_a_bound():
    unbounded = [path for path, node in _numeric_schemas(SCHEMA) if not any(b in node for b in BOUNDS)]
    assert not unbounded, f"numeric schema keys without minimum/maximum/exclusive*/enum: {unbounded}"


def test_building_a_model_with_an_out_of_range_value_names_model_and_key():
    with pytest.raises(ValueError, match=r"model 'abmil': dropout = 1\.5 is out of range"):
        build_model("abmil", dropout=1.5)


def _config():
    return {"datasets": {"d": {"classes": ["a", "b"]}}, "methods": {"m": {"model": "abmil"}}}


@pytest.mark.parametrize("block, key, value, expected", [
    ("train", "epochs", 0, "config train.epochs: 0 is less than the minimum of 1"),
    ("train", "lr", 0, "config train.lr: 0 is less than or equal to the minimum of 0"),
    ("train", "patience", 0, "config train.patience: 0 is less than the minimum of 1"),
    ("train", "nll_alpha", 1.2, "config train.nll_alpha: 1.2 is greater than the maximum of 1"),
    ("cv", "folds", 1, "config cv.folds: 1 is less than the minimum of 2"),
    ("patching", "min_tissue", -0.1, "config patching.min_tissue: -0.1 is less than the minimum of 0"),
])
def test_schema_rejects_out_of_range_values_in_one_line(block, key, value, expected):
    cfg = _config()
    cfg[block] = {key: value}
    with pytest.raises(ValueError) as info:
        validate_config(cfg, copy.deepcopy(SCHEMA))
    assert str(info.value) == expected


def test_in_range_values_pass():
    cfg = _config()
    cfg["train"] = {"epochs": 1, "lr": 1e-9, "patience": 1, "nll_alpha": 1.0}
    assert validate_config(cfg, copy.deepcopy(SCHEMA))["train"]["epochs"] == 1
