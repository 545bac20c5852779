"""Patch encoders (one explicit registry) and batched feature extraction from slides."""
