"""The parts of scripts/benchmark.py, one file per thing it measures."""
