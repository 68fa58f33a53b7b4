"""ASGI factory for `uvicorn --factory parity.asgi:create` (development with --reload).
`parity-server server` is the supported way to run; this path skips the embedded lock file."""

from __future__ import annotations

from fastapi import FastAPI

from parity.app import create_app
from parity.config import load_settings
from parity.container import Container
from parity.db.session import Database
from parity.logging import configure_logging


def create() -> FastAPI:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.embedded:
        settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(settings.resolved_database_url, pool_size=settings.database_pool_size)
    return create_app(Container(settings=settings, db=db))
