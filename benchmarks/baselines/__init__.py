"""Baseline systems the benchmarks compare raychat against."""
