"""The job driver: specs, the training loop, storage of metrics and checkpoints, the CLI."""
