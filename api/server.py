"""`serve`: run the API under uvicorn, as `a2c serve` does."""

from __future__ import annotations

import argparse
import logging

import uvicorn
from uvicorn.main import STARTUP_FAILURE

from api.app import create_app
from api.config import Settings, settings_from_args
from api.protocol import with_read_timeout


def serve(args: argparse.Namespace) -> int:
    """Serve the API; flags given on the command line override the `A2C_*` settings.

    One uvicorn worker only: each worker would start its own Ray and job manager. Its event loop
    and HTTP parser are uvloop and httptools (dependencies of this project): a metrics poll
    costs the server less CPU than with asyncio and h11, and on a machine that also trains,
    that CPU comes out of the training (docs/failures.md has the load figures). Each request
    must arrive within A2C_REQUEST_READ_TIMEOUT_S (`api.protocol`), idle connections close after
    A2C_KEEP_ALIVE_S, and at most A2C_MAX_CONNECTIONS are served at once.
    """
    settings = settings_from_args(args)
    logging.getLogger("api").setLevel(logging.INFO)
    server = uvicorn.Server(server_config(create_app(settings), settings))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else STARTUP_FAILURE


def server_config(app, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration of the API server: one worker, the read deadline, keep-alive and
    connection limits of `settings`."""
    return uvicorn.Config(app, host=settings.host, port=settings.port, workers=1,
                          http=with_read_timeout(settings.request_read_timeout_s),
                          timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.max_connections,
                          timeout_graceful_shutdown=10, log_level="info")
