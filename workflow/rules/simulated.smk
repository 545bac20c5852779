# The controlled MIL benchmark (source: simulated): bags recombined from the real patch features of a slide
# cohort with true tumour masks, every instance labelled (hardmil.data.simulated). The source writes its own
# splits (development pool -> train / val, test pool -> test), so rule splits must not make them.
# `make claims` (config/claims.yaml): every claims row against its baseline per regime, results/tables/claims.md.


include: "inputs/simulated.smk"


ruleorder: simulated_splits > splits


rule simulated:
    input:
        unpack(simulated_inputs),
    output:
        manifest="results/manifests/{dataset}.tsv",
        features=directory(f"results/features/{{dataset}}/{SIM_ENCODER}"),
        truth="results/simulated/{dataset}/truth.h5",
        summary="results/simulated/{dataset}/summary.json",
    log:
        "results/logs/simulated/{dataset}.log",
    benchmark:
        "results/benchmarks/simulated/{dataset}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("simulated")),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        classes=lambda wc: classes(wc.dataset),
        mil_test=lambda wc: is_mil_test(wc.dataset),
        model=lambda wc: {k: v for k, v in simulated_config(wc.dataset).items()
                          if is_mil_test(wc.dataset) or k not in ("bank", "bank_encoder", "dim", "tumour_min")},
        dim=lambda wc: simulated_config(wc.dataset)["dim"],
        tumour_min=lambda wc: simulated_config(wc.dataset).get("tumour_min"),
        slides_dir=lambda wc: None if is_mil_test(wc.dataset) else slides_dir(simulated_bank(wc.dataset)[0]),
        patch_size=config["patching"]["patch_size"],
    script:
        "../scripts/simulated.py"


# The development pool -> train / val and the test pool -> test, k folds, for one protocol and seed (adding a seed
# adds its own splits and leaves the generated bags and every finished run in place).
rule simulated_splits:
    input:
        manifest="results/manifests/{dataset}.tsv",
    output:
        SPLITS,
    log:
        "results/logs/splits/{dataset}/{protocol}/seed{seed}.log",
    benchmark:
        "results/benchmarks/splits/{dataset}/{protocol}/seed{seed}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("simulated")),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        folds=config["cv"]["folds"],
        val_fraction=config["cv"]["val_fraction"],
    script:
        "../scripts/simulated_splits.py"


if config.get("claims"):

    rule claims:
        input:
            claims_runs,
        output:
            **CLAIMS_OUTPUTS,
        log:
            f"results/logs/{CLAIMS_NAME}.log",
        benchmark:
            f"results/benchmarks/{CLAIMS_NAME}.tsv"
        conda:
            "../../envs/hardmil.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        params:
            claims=config["claims"],
            jobs=claims_jobs(),
            features={d: features_dir(d, SIM_ENCODER) for d in datasets_from("simulated")},
            classes={d: classes(d) for d in datasets_from("simulated")},
            truth={d: f"results/simulated/{d}/truth.h5" for d in config["claims"]["regimes"]},
        script:
            "../scripts/simulated_claims.py"
