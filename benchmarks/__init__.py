"""Benchmarks of the toolkit against the reference method; see docs/benchmarks.md."""
