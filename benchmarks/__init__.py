"""`make bench`: scripts that measure Streampai and print numbers (not tests).

Each benchmark is a module with ``run(quick: bool) -> dict`` that starts its own
private redis-server and its own daphne / runworker processes. ``python -m
benchmarks`` runs every one in a fresh subprocess and writes docs/benchmarks.md
and docs/benchmarks.json. ``--quick`` (or BENCH_QUICK=1) uses small sizes for
development on a busy machine; ``--only NAME`` runs a subset.
"""
