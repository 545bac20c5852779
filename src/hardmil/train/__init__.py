"""Training: the plain loop and the per-fold runner."""
