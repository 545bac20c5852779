"""Data: downloads, dataset conversion, bag I/O and splits."""
