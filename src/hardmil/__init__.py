"""hardmil: hard-instance mining for multiple-instance learning on histopathology slides.

Reproduces Li et al. (hard-negative mining) and Tang et al. (MHIM-MIL / MHIM-v2) as a Snakemake workflow.
"""

__version__ = "0.1.0"
