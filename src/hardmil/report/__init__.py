"""Reporting: published values and table generators."""
