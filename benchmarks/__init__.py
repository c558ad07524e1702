"""Benchmarks of the toolkit against the reference method; see BENCHMARKS.md."""
