"""Benchmark harness for hyperparameter optimization (PBT and baselines) on SLURM clusters."""

__version__ = "0.1.0"
