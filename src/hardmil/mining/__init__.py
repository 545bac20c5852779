"""Hard-instance mining: Li et al. hard-negative bags (MHIM masking lives with its framework)."""
