"""One training run: its spec, the training loop, its actors, its sinks and checkpoints.

See docs/architecture.md for how a run's data flows and which process owns what.
"""
