"""Evaluation: metrics and their aggregation."""
