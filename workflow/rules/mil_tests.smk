# The MIL-assumption unit tests' report (Raff & Holt, NeurIPS 2023; `make mil-tests`, config/mil_tests.yaml):
# every method's test AUC over seeds on each test dataset (source simulated, block mil_test), with its interval
# and verdict (hardmil.report.mil_tests, docs/mil_tests.md).


include: "inputs/mil_tests.smk"


if config.get("mil_tests"):

    rule mil_tests:
        input:
            mil_tests_runs,
        output:
            **MIL_TESTS_OUTPUTS,
        log:
            "results/logs/mil_tests.log",
        benchmark:
            "results/benchmarks/mil_tests.tsv"
        conda:
            "../../envs/hardmil.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            cfg=config["mil_tests"],
            jobs=mil_tests_jobs(),
            classes={d: classes(d) for d in config["mil_tests"]["tests"]},
            folds=config["cv"]["folds"],
            seeds=SEEDS,
        script:
            "../scripts/mil_tests.py"
