"""Benchmarks: each prints its named baseline, its result and the ratio (`python -m bench.<module>`)."""
