"""Adapter: per-fold metrics.json + predictions.tsv (or per-method efficiency.json) -> results/tables/{table}.*"""

from hardmil.report.published import METRICS
from hardmil.report.tables import RunRef, aggregate, runs_note, table_spec, write_table
from hardmil.utils import rule_log

p = snakemake.params
t = p.table
with rule_log(snakemake.log[0]):
    rows, published_values, spread = table_spec(t)
    title = t.get("title", t.get("published") or snakemake.wildcards.table)
    if t.get("kind", "runs") == "efficiency":
        from hardmil.report.efficiency import efficiency_records

        records = efficiency_records(list(snakemake.input.runs), rows, published_values)
        note = ("Measured by the workflow's efficiency rule on this machine (see each row's device); the paper "
                "measured on an RTX 3090 with CAMELYON (~8,000 patches per slide), so compare ratios between "
                "rows, not absolute values. Parameters: trainable (an MHIM teacher is not trained). Train time: "
                "mean seconds per epoch of the method's runs. Peak memory: CUDA max allocated (GPU) or the "
                "rise of the process's peak RSS during one timed training epoch (CPU). Inference: test "
                "slides per second of the trained fold-0 model.")
    else:
        runs = [RunRef.from_path(path) for path in snakemake.input.runs]
        records = aggregate(runs, rows, published_values, t.get("metrics") or METRICS, spread, versus=p.versus,
                            delta_metrics=t.get("delta_metrics"), n_boot=t.get("n_boot", 2000),
                            level=t.get("level", 0.95))
        note = runs_note(records, spread, len(p.folds), len(p.seeds))
    if t.get("external"):
        note += (f" Cross-source: each fold's model trained on {t['dataset']} is evaluated, without retraining, on "
                 f"the whole external dataset of entry {t['external']!r}.")
    write_table(records, snakemake.output.csv, snakemake.output.md, title, note, tex_path=snakemake.output.tex)
