"""Benchmarks of a2c-service against Stable-Baselines3 A2C and RLlib PPO-as-A2C, on one machine.

`python -m bench.run` runs every runner as its own process, watches each process tree's
memory, and prints one comparison table (JSON under bench/results/). See bench/README.md.
"""
