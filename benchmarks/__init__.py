"""Benchmark scripts, each printing its figures: `python -m benchmarks.<name>`; `make bench` runs them all."""
