"""Benchmarks behind `make bench`: each module's `run(quick)` returns figures measured side by
side with their baselines in the same run; `python -m bench` merges them into one JSON object."""
