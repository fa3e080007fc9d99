"""Hyperparameter sweeps on Ray Tune: each trial is a job of the job service (see docs/sweeps.md)."""
