# Case-level stratified k-fold for every seed and protocol of a dataset (one cheap job per dataset).


rule splits:
    input:
        manifest=lambda wc: manifest_path(wc.dataset),
        features=lambda wc: [
            features_dir(wc.dataset, e) for e in config["datasets"][wc.dataset]["encoders"]
        ],
    output:
        expand(
            "results/splits/{{dataset}}/{protocol}/seed{seed}.tsv",
            protocol=config["protocols"],
            seed=SEEDS,
        ),
    log:
        "results/logs/splits/{dataset}.log",
    benchmark:
        "results/benchmarks/splits/{dataset}.tsv"
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        classes=lambda wc: classes(wc.dataset),
        folds=config["cv"]["folds"],
        val_fraction=config["cv"]["val_fraction"],
        protocols=config["protocols"],
        seeds=SEEDS,
        task=lambda wc: task(wc.dataset),
        stratify=lambda wc: config["datasets"][wc.dataset]["stratify"],
    script:
        "../scripts/splits.py"
