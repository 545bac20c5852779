# hardmil: the papers' tables from raw data. Wiring only; the stages live in workflow/rules/.
from snakemake.utils import min_version

min_version("9.0")


# The demo config is the default; `--configfile X` replaces it instead of being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/slides.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/store.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/hardneg.smk"
include: "workflow/rules/confounders.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/efficiency.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/survival.smk"
include: "workflow/rules/simulated.smk"
include: "workflow/rules/mil_tests.smk"
include: "workflow/rules/mhim_sweep.smk"


rule all:
    default_target: True
    input:
        all_targets(),
