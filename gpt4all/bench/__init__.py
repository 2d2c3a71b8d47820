"""Benchmarks: `gpt4all-bench NAME` (or `python -m gpt4all.bench NAME`) prints a table and writes JSON."""
