# Where MHIM-v2 works (`make mhim-sweep`, config/mhim_sweep.yaml, docs/mhim_sweep.md): per witness-rate regime (a
# simulated dataset) each MHIM method's paired Δ AUC against the baseline, and the runs' instance diagnostics
# (instance_diagnostics.tsv in each run folder, hardmil.train.diagnostics) -> results/tables/mhim_sweep.md and
# results/figures/mhim_sweep.png.


include: "inputs/mhim_sweep.smk"


if config.get("mhim_sweep"):

    rule mhim_sweep:
        input:
            mhim_sweep_runs,
        output:
            **SWEEP_OUTPUTS,
        log:
            "results/logs/mhim_sweep.log",
        benchmark:
            "results/benchmarks/mhim_sweep.tsv"
        conda:
            "../../envs/hardmil.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            sweep=mhim_sweep_spec(),
            jobs=mhim_sweep_jobs(),
            classes={d: classes(d) for d in config["mhim_sweep"]["regimes"]},
        script:
            "../scripts/mhim_sweep.py"
