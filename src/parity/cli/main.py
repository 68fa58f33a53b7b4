"""The `parity-server` command line."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from parity import __version__
from parity.cli.help_width import widen_help_without_terminal
from parity.cli.plain_warnings import plain_warnings
from parity.config import CONFIG_PATH_ENV, Settings, load_settings
from parity.db.lockfile import AlreadyRunning
from parity.errors import ConfigError
from parity.logging import configure_logging

if TYPE_CHECKING:
    from parity.db.migrate import DatabaseUnavailable

app = typer.Typer(
    name="parity-server",
    help="Coordination server for a decentralized AI and compute network.",
    no_args_is_help=False,
    add_completion=False,
)


def _settings(config: str | None) -> Settings:
    try:
        return load_settings(config_file=config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _database_error(settings: Settings, exc: DatabaseUnavailable) -> typer.Exit:
    """Print why no connection to the database opened, naming it (without its password) and
    the settings it came from, on one line; the exit to raise."""
    typer.echo(
        f"error: cannot connect to the database {exc.url} (from {settings.database_source}): "
        f"{exc.reason}",
        err=True,
    )
    return typer.Exit(1)


ConfigOpt = Annotated[
    str | None, typer.Option("--config", help="Path of a .env file (default ./.env)")
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"parity-server {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    config: ConfigOpt = None,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """With no command, runs the server (as the original CLI did)."""
    if ctx.invoked_subcommand is None:
        server(config)
        return
    if config is not None:
        # `parity-server --config F COMMAND`: F is the settings file of the whole command, as
        # PARITY_CONFIG_PATH would name it (a --config given to COMMAND itself still wins).
        path = Path(config).expanduser()
        if not path.is_file():
            typer.echo(f"error: --config names {config!r}: no such file", err=True)
            raise typer.Exit(2)
        os.environ[CONFIG_PATH_ENV] = str(path.resolve())


@app.command()
def server(config: ConfigOpt = None) -> None:
    """Run the API server and its background loops (embedded SQLite unless DATABASE_URL)."""
    from parity.cli.server import run_server
    from parity.db import migrate

    settings = _settings(config)
    configure_logging(settings.log_level, settings.log_format)
    try:
        run_server(settings)
    except AlreadyRunning as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except migrate.SchemaTooNew as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except migrate.DatabaseUnavailable as exc:
        raise _database_error(settings, exc) from None
    except migrate.DatabaseUrlInvalid as exc:
        typer.echo(f"error: {settings.database_source}: {exc}", err=True)
        raise typer.Exit(2) from None
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: cannot start: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("migrate")
def migrate_cmd(
    config: ConfigOpt = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 unless the schema is at head; change nothing")
    ] = False,
    downgrade: Annotated[
        str | None, typer.Option("--downgrade", help="Downgrade to this revision (e.g. base)")
    ] = None,
) -> None:
    """Apply database migrations (under the migration lock on PostgreSQL)."""
    from parity.db import migrate

    if check and downgrade is not None:
        typer.echo("error: --check and --downgrade exclude each other: give one", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    url = settings.resolved_database_url
    if settings.embedded and not check:  # --check changes nothing, not even the directory
        from parity.cli.home import make_home

        try:
            make_home(settings)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        if check:
            st = asyncio.run(migrate.schema_status(url))
            typer.echo(f"current: {st.current or 'none'}  head: {st.head}")
            if st.too_new:
                typer.echo("database is newer than this code", err=True)
            raise typer.Exit(0 if st.up_to_date else 1)
        if downgrade is not None:
            st = asyncio.run(migrate.downgrade(url, downgrade))
        else:
            st = asyncio.run(migrate.upgrade(url))
    except migrate.RevisionRefused as exc:
        typer.echo(f"error: --downgrade: {exc}", err=True)
        raise typer.Exit(2) from None
    except migrate.SchemaTooNew as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except migrate.DatabaseUnavailable as exc:
        raise _database_error(settings, exc) from None
    except migrate.DatabaseUrlInvalid as exc:
        typer.echo(f"error: {settings.database_source}: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: database unreachable: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"schema at {st.current or 'base'} (head {st.head})")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _register_optional() -> None:
    from parity.cli.auth import register_auth_command
    from parity.cli.chain import register_chain_commands
    from parity.cli.fl import fl_app
    from parity.cli.llm import llm_app
    from parity.cli.storage import storage_app
    from parity.cli.tasks import task_app
    from parity.cli.token import register_token_command

    register_auth_command(app)
    register_chain_commands(app)
    register_token_command(app)
    app.add_typer(storage_app, name="storage")
    app.add_typer(llm_app, name="llm")
    app.add_typer(fl_app, name="fl")
    app.add_typer(task_app, name="task")


_register_optional()


def main() -> None:
    widen_help_without_terminal()
    plain_warnings()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
