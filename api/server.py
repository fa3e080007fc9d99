"""`serve`: run the API under uvicorn, as `a2c serve` does."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from api.app import create_app
from api.config import get_settings


def serve(args: argparse.Namespace) -> int:
    """Serve the API; flags given on the command line override the `A2C_*` settings.

    One uvicorn worker only: each worker would start its own Ray and job manager. Its event loop
    and HTTP parser are uvloop and httptools (dependencies of this project; uvicorn's "auto"
    picks them): with them a metrics poll costs the server about 30% less CPU than with asyncio
    and h11, and on a machine that also trains, that CPU comes out of the training.
    """
    overrides = {name: getattr(args, name, None) for name in ("host", "port", "data_dir", "address", "storage")}
    settings = get_settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    logging.getLogger("api").setLevel(logging.INFO)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, workers=1,
                timeout_graceful_shutdown=10, log_level="info")
    return 0
