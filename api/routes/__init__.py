"""The API's routers, one per resource: jobs, metrics, checkpoints, health."""
