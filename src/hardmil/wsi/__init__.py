"""Whole-slide images: opening, tissue segmentation, the patch grid and a synthetic slide cohort."""
