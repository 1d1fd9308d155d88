"""Deterministic fixed-point portfolio-margin engine, mirrored to the wei by contracts/.

Pure: no I/O, and nothing here imports from ``keeper``.
"""
