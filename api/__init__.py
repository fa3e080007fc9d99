"""The HTTP API of a2c-service: a FastAPI app over the job manager of `service/`."""
