# Input functions of slides.smk (functions only: Snakemake's linter wants rules and functions apart).
from hardmil.config import synthetic_config as hardmil_synthetic_config


def synthetic_config(dataset):
    """The synthetic block with the dataset's own overrides (``datasets.<name>.synthetic``) on top."""
    return hardmil_synthetic_config(config, dataset)


def synthetic_textures(kind):
    """Input function: the asset files of the cohort's ``kind`` ('normal' or 'tumour') textures."""
    return lambda wc: [asset_path(a) for a in synthetic_config(wc.dataset)[kind]]
