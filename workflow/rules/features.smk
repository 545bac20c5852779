# Patch features per (slide dataset, encoder, shard), then the per-dataset list of slides every stage
# finished and the training view of their features (hard links), which splits/train/... read.
include: "inputs/features.smk"


rule features:
    input:
        patches=PATCH_REPORT,
        manifest=lambda wc: raw_manifest(wc.dataset),
        weights=encoder_weights,
    output:
        report=FEATURE_REPORT,
    log:
        "results/logs/features/{dataset}/{encoder}/{shard}-of-{n}.log",
    benchmark:
        "results/benchmarks/features/{dataset}/{encoder}/{shard}-of-{n}.tsv"
    wildcard_constraints:
        dataset=one_of(slide_datasets()),
        encoder=one_of(slide_encoders()),
        shard=r"\d+",
        n=r"\d+",
    conda:
        "../../envs/hardmil.yaml"
    threads: lambda wc: config["encoders"][wc.encoder]["threads"]
    resources:
        mem_mb=lambda wc: config["encoders"][wc.encoder]["mem_mb"],
        runtime=lambda wc: config["encoders"][wc.encoder]["runtime"],
        gpu=1,
    params:
        slides_dir=lambda wc: slides_dir(wc.dataset),
        encoder=lambda wc: config["encoders"][wc.encoder],
        on_error=lambda wc: config["datasets"][wc.dataset]["on_error"],
    script:
        "../scripts/features.py"


rule bag_manifest:
    input:
        manifest=lambda wc: raw_manifest(wc.dataset),
        reports=lambda wc: patch_reports(wc.dataset)
        + [r for e in config["datasets"][wc.dataset]["encoders"] for r in feature_reports(wc.dataset, e)],
    output:
        "results/bags/{dataset}.tsv",
    log:
        "results/logs/bag_manifest/{dataset}.log",
    benchmark:
        "results/benchmarks/bag_manifest/{dataset}.tsv"
    wildcard_constraints:
        dataset=one_of(slide_datasets()),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/bag_manifest.py"


rule bag_features:
    input:
        bags="results/bags/{dataset}.tsv",
        reports=lambda wc: feature_reports(wc.dataset, wc.encoder),
    output:
        directory("results/bags/{dataset}/{encoder}"),
    log:
        "results/logs/bag_features/{dataset}/{encoder}.log",
    benchmark:
        "results/benchmarks/bag_features/{dataset}/{encoder}.tsv"
    wildcard_constraints:
        dataset=one_of(slide_datasets()),
        encoder=one_of(slide_encoders()),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/bag_features.py"


# Encoder weights are never downloaded: a configured weights path that is missing (and that no rule such as
# fetch_asset makes) gets this job, which fails with what to put there. It keeps `snakemake -n` complete.
rule encoder_weights:
    output:
        "{weights}",
    log:
        "results/logs/encoder_weights/{weights}.log",
    benchmark:
        "results/benchmarks/encoder_weights/{weights}.tsv"
    wildcard_constraints:
        weights=one_of(user_weights()),
    conda:
        "../../envs/hardmil.yaml"
    localrule: True
    params:
        users=lambda wc: {n: e["model"] for n, e in config["encoders"].items() if e.get("weights") == wc.weights},
    script:
        "../scripts/encoder_weights.py"
