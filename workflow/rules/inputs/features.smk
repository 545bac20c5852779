# Input functions and paths of features.smk (functions only: Snakemake's linter wants rules and functions apart).
FEATURE_REPORT = "results/features/{dataset}/{encoder}/shards/{shard}-of-{n}.tsv"


def slide_encoders():
    return sorted({e for d in slide_datasets() for e in config["datasets"][d]["encoders"]})


def patch_reports(dataset):
    n = config["datasets"][dataset]["shards"]
    return [PATCH_REPORT.format(dataset=dataset, shard=i, n=n) for i in range(n)]


def feature_reports(dataset, encoder):
    n = config["datasets"][dataset]["shards"]
    return [FEATURE_REPORT.format(dataset=dataset, encoder=encoder, shard=i, n=n) for i in range(n)]


def user_weights():
    """Configured encoder weights that no rule makes (the demo's come from fetch_asset under resources/assets)."""
    made = {asset_path(a) for a in config["assets"]}
    return sorted({e["weights"] for e in config["encoders"].values() if e.get("weights")} - made)


def encoder_weights(wc):
    weights = config["encoders"][wc.encoder].get("weights")
    return [weights] if weights else []
