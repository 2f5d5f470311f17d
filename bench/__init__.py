"""Benchmarks, outside the test suite: `make bench` prints each figure beside its ceiling."""
