# Input functions of download.smk (functions only: Snakemake's linter wants rules and functions apart).
def slide_source_config(dataset):
    """The dataset's `gdc` or `camelyon` block (the latter may be left out: schema defaults apply)."""
    d = config["datasets"][dataset]
    return dict(d.get(d["source"]) or {})
