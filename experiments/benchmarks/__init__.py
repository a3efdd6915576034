"""Benchmarks: step throughput, overheads, input pipeline, compilation, memory, scaling.

Run everything with ``python -m experiments.benchmarks`` (see __main__.py);
results go to experiments/benchmarks/RESULTS.md.
"""
