"""envs/: one conda environment for every rule, asking for the same packages and versions as pyproject.toml."""

import tomllib
import yaml

from .conftest import REPO


def test_env_files_agree_with_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        listed = [p for p in pip if not p.startswith("-")]
        assert sorted(listed) == sorted(deps), f"{env.name} disagrees with pyproject.toml"


def test_every_rule_has_log_benchmark_and_the_one_conda_env():
    import re

    assert [p.name for p in (REPO / "envs").glob("*.yaml")] == ["hardmil.yaml"]  # built once, shared by all rules
    n = 0
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.split(r"\n\s*rule ", text)[1:]:
            name = rule.split(":")[0]
            for directive in ("log:", "benchmark:", "conda:"):
                assert directive in rule, f"{smk.name}: rule {name} lacks {directive}"
            env = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", rule).group(1)
            assert env == "../../envs/hardmil.yaml", f"{smk.name}: rule {name} names {env}"
            n += 1
    assert n >= 20
