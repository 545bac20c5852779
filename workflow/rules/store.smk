# The bag store of one dataset/encoder: every slide's features packed into one memory-mapped array
# (hardmil.data.store), built once; every stage that reads features reads it.


rule bag_store:
    input:
        manifest=lambda wc: manifest_path(wc.dataset),
        features=lambda wc: features_dir(wc.dataset, wc.encoder),
    output:
        multiext(f"{STORE_DIR}/", *STORE_FILES),
    log:
        "results/logs/bag_store/{dataset}/{encoder}.log",
    benchmark:
        "results/benchmarks/bag_store/{dataset}/{encoder}.tsv"
    conda:
        "../../envs/hardmil.yaml"
    params:
        dtype=config["store"]["dtype"],
        task=lambda wc: task(wc.dataset),
        classes=lambda wc: classes(wc.dataset),
    script:
        "../scripts/bag_store.py"
