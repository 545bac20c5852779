# Train and evaluate: one job per (dataset, encoder, method, protocol, seed, fold), or, with
# train.group: method, one job per (dataset, encoder, method, protocol) that runs every seed and fold.
TR = config["train"]


if TR["group"] == "fold":

    rule train:
        input:
            splits="results/splits/{dataset}/{protocol}/seed{seed}.tsv",
            features=lambda wc: features_dir(wc.dataset, wc.encoder),
        output:
            [f"{RUN_DIR}/{name}" for name in RUN_FILES],
        log:
            "results/logs/train/{dataset}/{encoder}/{method}/{protocol}/seed{seed}/fold{fold}.log",
        benchmark:
            "results/benchmarks/train/{dataset}/{encoder}/{method}/{protocol}/seed{seed}/fold{fold}.tsv"
        conda:
            "../../envs/torch.yaml"
        threads: TR["threads"]
        resources:
            mem_mb=TR["mem_mb"],
            runtime=TR["runtime"],
            gpu=1,
        params:
            run=train_params,
        script:
            "../scripts/train.py"

else:

    rule train_method:
        input:
            splits=expand(
                "results/splits/{{dataset}}/{{protocol}}/seed{seed}.tsv", seed=SEEDS
            ),
            features=lambda wc: features_dir(wc.dataset, wc.encoder),
        output:
            expand(
                "results/runs/{{dataset}}/{{encoder}}/{{method}}/{{protocol}}/seed{seed}/fold{fold}/{name}",
                seed=SEEDS,
                fold=FOLDS,
                name=RUN_FILES,
            ),
        log:
            "results/logs/train/{dataset}/{encoder}/{method}/{protocol}/all.log",
        benchmark:
            "results/benchmarks/train/{dataset}/{encoder}/{method}/{protocol}/all.tsv"
        conda:
            "../../envs/torch.yaml"
        threads: TR["threads"]
        resources:
            mem_mb=TR["mem_mb"],
            runtime=TR["runtime"],
            gpu=1,
        params:
            run=train_params,
            seeds=SEEDS,
            folds=FOLDS,
        script:
            "../scripts/train.py"
