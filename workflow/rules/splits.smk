# Case-level stratified k-fold of a dataset for one protocol and seed (one cheap job each, so that adding a seed
# writes only its own splits and leaves every finished fold of the other seeds in place).


rule splits:
    input:
        manifest=lambda wc: manifest_path(wc.dataset),
        features=lambda wc: [
            features_dir(wc.dataset, e) for e in config["datasets"][wc.dataset]["encoders"]
        ],
    output:
        SPLITS,
    log:
        "results/logs/splits/{dataset}/{protocol}/seed{seed}.log",
    benchmark:
        "results/benchmarks/splits/{dataset}/{protocol}/seed{seed}.tsv"
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
        task=lambda wc: task(wc.dataset),
        stratify=lambda wc: config["datasets"][wc.dataset]["stratify"],
    script:
        "../scripts/splits.py"
