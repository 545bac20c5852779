"""Hard-instance mining stages that run between trainings: Li et al. hard-negative bags, IBMIL confounders.

MHIM's online masking lives with its framework in :mod:`hardmil.models.mhim`.
"""
