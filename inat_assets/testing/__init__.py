"""Tooling, not product: the synthetic sample-archive generator and the fault-injecting photo mirror.

Used by the demo, the tests and the benchmarks; no asset or engine module imports from here.
"""
