"""Adapter: the sweep's runs and their instance diagnostics -> results/tables/mhim_sweep.{md,tsv}, the diagnostics
table and the figure (hardmil.report.mhim_sweep)."""

from hardmil.report.mhim_sweep import sweep_records, write_sweep
from hardmil.utils import rule_log

p, out = snakemake.params, snakemake.output
with rule_log(snakemake.log[0]):
    s = p.sweep
    deltas, diags = sweep_records(s, p.jobs, p.classes)
    runs = len(next(iter(next(iter(p.jobs.values())).values())))
    note = (f"Protocol `{s['protocol']}`, {runs} fold runs (seeds x folds) per method and regime, each MHIM-v2 run "
            f"taught by the same fold's `{s['baseline']}` run it is compared with. Δ: paired over identical test bags "
            "(hardmil.eval.stats.paired_delta, as the claims report). Failed: fold runs with test AUC below "
            f"{s['chance']:g}. Construction and reading: docs/mhim_sweep.md.")
    write_sweep(deltas, diags, md=out.md, tsv=out.tsv, diagnostics_tsv=out.diagnostics, figure=out.figure,
                title=s["title"], note=note, level=s["level"])
