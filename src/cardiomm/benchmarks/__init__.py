"""Benchmarks that print tables (speed, memory); never timed tests."""
