"""Adapter: every MIL-unit-test run -> results/tables/mil_tests.{md,tsv} and results/figures/mil_tests.png
(hardmil.report.mil_tests)."""

from hardmil.report.mil_tests import mil_test_records, write_mil_tests
from hardmil.utils import rule_log

p, out = snakemake.params, snakemake.output
with rule_log(snakemake.log[0]):
    c = p.cfg
    records = mil_test_records(c, p.jobs, p.classes)
    note = (f"Test AUC: mean over {len(p.seeds)} seeds of each seed's pooled out-of-fold predictions ({p.folds} folds, "
            f"protocol `{c['protocol']}`), with its {c['level']:.0%} t interval over seeds. Verdict: **pass** = the "
            "interval lies above 0.5, **FAIL** = below 0.5 (the model learned the shortcut the MIL assumption "
            "forbids), undecided = it contains 0.5. *val*: mean selection-set AUC at the selected epoch over the fold "
            "runs (development distribution, shortcut included): near 0.5 = the model learned nothing, so its test "
            "verdict says nothing about the assumption. Tests, pass criterion and recipe: docs/mil_tests.md.")
    write_mil_tests(records, md=out.md, tsv=out.tsv, png=out.png, title=c["title"], note=note)
