"""Adapter: per-fold metrics.json -> results/tables/{table}.{csv,md} (hardmil.report.tables)."""

from hardmil.report import published
from hardmil.report.published import METRICS
from hardmil.report.tables import RunRef, aggregate, write_table
from hardmil.utils import rule_log

p = snakemake.params
t = p.table
with rule_log(snakemake.log[0]):
    runs = [RunRef.from_path(path) for path in snakemake.input]
    paper = t.get("published")
    metrics = t.get("metrics", METRICS)
    records = aggregate(runs, t["rows"], published.load(paper.split("_")[0])[paper] if paper else {}, metrics)
    note = ("Ours: mean ± std over folds x repetitions; (se) = standard error over repetitions, each repetition "
            "being the mean over its folds. Paper: mean ± standard error as published. Δ = ours - paper. "
            "Protocol `paper`: the test fold also picks the epoch and the Youden threshold (as the authors' code "
            "does); `clean`: a validation split of each training fold picks both and the test fold is used once. "
            f"{len(p.folds)} folds x {len(p.seeds)} repetitions (seeds).")
    if t.get("external"):
        note += (f" Cross-source: each fold's model trained on {t['dataset']} is evaluated, without retraining, on "
                 f"the whole external dataset of entry {t['external']!r}.")
    write_table(records, snakemake.output.csv, snakemake.output.md, t.get("title", paper or snakemake.wildcards.table),
                note, metrics)
