"""Adapter: one configured figure -> results/figures/{figure}.{png,pdf} (hardmil.report.figures)."""

from pathlib import Path

from hardmil.report import figures as F
from hardmil.utils import rule_log

f = snakemake.params.figure
with rule_log(snakemake.log[0]):
    where = f"{f['dataset']}, protocol {f['protocol']}"
    if f["kind"] == "sweep":
        panels = F.sweep_panels(f, lambda m: snakemake.params.runs[m])
        fig = F.sweep_figure(panels, metric=f["metric"], title=f.get("title", snakemake.wildcards.figure),
                             footnote=f.get("footnote", f"{where}; each point: mean ± std over all folds x seeds."))
    elif f["kind"] == "curves":
        fig = F.curves_figure({label: [str(Path(p).with_name("history.tsv")) for p in snakemake.params.runs[m]]
                               for m, label in f["methods"].items()},
                              title=f.get("title", f"Training curves on {where}"))
    elif f["kind"] == "assessment":
        tables = snakemake.params.assessment  # method -> its runs' teacher_assessment.tsv (the rule's inputs)
        fig = F.assessment_figure({label: tables[m] for m, label in f["methods"].items()},
                                  classes=snakemake.params.classes, title=f.get("title", ""))
    else:
        fig = F.mined_figure(list(snakemake.input), title=f.get("title", ""))
    F.save_figure(fig, snakemake.output.png, snakemake.output.pdf)
