# Tissue segmentation and the 20x patch grid, one job per shard of a slide dataset. Per-slide outputs
# (results/patches/{dataset}/{slide}.h5 and .png) are written atomically and skipped when done; the shard
# report is the job's declared output, so the DAG is complete before any slide list is known.


rule patches:
    input:
        manifest=lambda wc: raw_manifest(wc.dataset),
        slides=slide_inputs,
    output:
        report=PATCH_REPORT,
    log:
        "results/logs/patches/{dataset}/{shard}-of-{n}.log",
    benchmark:
        "results/benchmarks/patches/{dataset}/{shard}-of-{n}.tsv"
    wildcard_constraints:
        dataset=one_of(slide_datasets()),
        shard=r"\d+",
        n=r"\d+",
    conda:
        "../../envs/hardmil.yaml"
    threads: config["patching"]["threads"]
    resources:
        mem_mb=config["patching"]["mem_mb"],
        runtime=config["patching"]["runtime"],
    params:
        slides_dir=lambda wc: slides_dir(wc.dataset),
        patching=config["patching"],
        on_error=lambda wc: config["datasets"][wc.dataset]["on_error"],
    script:
        "../scripts/patches.py"
