"""`parity-server storage`: put, get, pin, unpin and info talk to a server over HTTP with the
session `parity-server auth --server URL` stored for the keystore's address (or --token); gc runs
on this machine against the configured database and content store, like `migrate`. The server is
chosen by the one rule of :mod:`parity.cli.server_url`."""

from __future__ import annotations

import asyncio
import re
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import httpx
import typer
from rich.progress import DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from parity.cli import client as cli
from parity.cli.client import KeystoreOpt, QuietOpt, ServerOpt, TokenOpt
from parity.cli.server_url import no_answer
from parity.config import Settings, load_settings
from parity.core.storage.importer import FileImporter
from parity.core.storage.multiformats import Cid, CidError
from parity.errors import ConfigError, ParityError

if TYPE_CHECKING:
    from parity.db.migrate import SchemaStatus

storage_app = typer.Typer(
    name="storage",
    help="Content storage: upload, download, pin and unpin files by CID; garbage-collect.",
    no_args_is_help=True,
)

API = "/api/v1/storage"


def _progress(quiet: bool) -> Progress:
    return cli.progress(quiet, DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())


@storage_app.command("put")
def put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    pin: Annotated[bool, typer.Option("--pin/--no-pin", help="Pin it for you.")] = True,
    name: Annotated[
        str | None, typer.Option("--name", help="Pin label (default: file name).")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Upload FILE (streamed, with a progress bar); prints its CID. A file over the server's
    upload limit is refused before anything is sent."""
    st = file.stat()
    if not stat.S_ISREG(st.st_mode):  # a pipe or a device: no size to declare up front
        raise cli.fail(
            f"{file} is not a regular file (a pipe or a device); save it to a file first"
        )
    size = st.st_size
    with cli.connect(server, keystore, token) as client, _progress(quiet) as progress:
        _refuse_oversized(client, file, size)
        task = progress.add_task(f"put {file.name}", total=size)
        try:
            r = cli.call(
                client,
                "PUT",
                f"{API}/upload",
                doing="the upload",
                params={"pin": "true" if pin else "false", "name": name or _pin_label(file)},
                content=cli.file_pieces(file, lambda n: progress.advance(task, n), size),
                headers=cli.upload_headers(size),
            )
        except cli.FileChanged as exc:
            raise cli.fail(str(exc)) from None
    if r.status_code != 201:
        raise cli.refused(r, client)
    doc = r.json()
    typer.echo(
        f"{doc['size']} bytes, pinned: {doc['pinned']}, CIDv0: {doc.get('cid_v0')}", err=True
    )
    typer.echo(doc["cid"])


# What a pin name may not hold (the server's rule, parity.db.types.check_name): Unicode "Cc".
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _pin_label(file: Path) -> str:
    """The default pin name: the file's name, with any control character (a newline is legal
    in a Linux file name, not in a pin name) shown as '?'."""
    return _CONTROL.sub("?", file.name)


def human_bytes(n: int) -> str:
    """``1536`` → ``"1.5 KiB"``; binary units, as the limits are set in bytes."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def _refuse_oversized(client: httpx.Client, file: Path, size: int) -> None:
    """Compare the file with the server's STORAGE_MAX_UPLOAD_BYTES (GET /storage/usage) and
    stop before the upload when it cannot fit. A server that does not say leaves the decision
    to the upload itself (it refuses with 413 as before)."""
    r = cli.call(client, "GET", f"{API}/usage", doing="the upload")
    if r.status_code in (401, 403):
        raise cli.refused(r, client)  # the upload would be refused the same way
    try:
        limit = r.json().get("max_upload_bytes") if r.status_code == 200 else None
    except (ValueError, AttributeError):
        limit = None
    if isinstance(limit, int) and not isinstance(limit, bool) and size > limit:
        raise cli.fail(
            f"{file} is {human_bytes(size)} ({size} bytes), over the server's upload limit of "
            f"{human_bytes(limit)} ({limit} bytes, STORAGE_MAX_UPLOAD_BYTES); nothing was sent"
        )


def _verify(wanted: Cid, importer: FileImporter) -> str | None:
    _, result = importer.finish()
    mine = {result.cid.multihash} | ({result.cid_v0.multihash} if result.cid_v0 else set())
    if wanted.multihash in mine:
        return None
    return f"the bytes received hash to {result.cid}, not {wanted}"


def _output_path(output: Path | None, cid: str) -> Path | None:
    """Where `get` writes: None for stdout ('-'), else the file (an existing directory gets the
    file CID inside it, as with the default ./CID)."""
    if output is not None and str(output) == "-":
        return None
    return cli.output_file(output, cid)


def _open_part(final: Path) -> BinaryIO:
    """The ``.part`` file beside ``final`` that the download goes to until it is checked."""
    try:
        return open(cli.part_file(final), "wb")
    except OSError as exc:
        raise cli.fail(f"cannot write {final}: {exc.strerror or exc}") from None


def _keep(final: Path) -> None:
    """Move the checked download from its ``.part`` file to ``final``."""
    try:
        cli.part_file(final).replace(final)
    except OSError as exc:
        raise cli.fail(f"cannot write {final}: {exc.strerror or exc}") from None


@storage_app.command("get")
def get(
    cid: str,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write ('-' for stdout; a directory gets DIR/CID; default ./CID).",
        ),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify", help="Check that the bytes hash to CID (kubo import defaults)."
        ),
    ] = True,
    quiet: QuietOpt = False,
) -> None:
    """Download CID (streamed) and check it hashes to CID."""
    try:
        wanted = Cid.parse(cid)
    except CidError as exc:
        raise cli.fail(f"{cid!r} is not a CID: {exc}", 2) from None
    importer = FileImporter(keep_blocks=False)
    final = _output_path(output, cid)
    sink = sys.stdout.buffer if final is None else _open_part(final)
    kept = False
    try:
        try:
            _download(cid, sink, importer if verify else None, server, token, keystore, quiet)
        except OSError as exc:  # the disk filled up, the file system went away
            raise cli.fail(f"cannot write {final or 'stdout'}: {exc.strerror or exc}") from None
        problem = _verify(wanted, importer) if verify else None
        if problem is not None:
            raise cli.fail(problem + " (use --no-verify for content imported with other settings)")
        if final is not None:
            sink.close()
            _keep(final)
            kept = True
    finally:
        if final is not None and not kept:  # refused, cut off, wrong bytes or Ctrl-C: no debris
            sink.close()
            cli.part_file(final).unlink(missing_ok=True)
    if final is not None:
        typer.echo(str(final), err=True)


def _download(
    cid: str,
    sink: BinaryIO,
    importer: FileImporter | None,
    server: str | None,
    token: str | None,
    keystore: Path | None,
    quiet: bool,
) -> None:
    """Stream CID from the server into ``sink`` (and ``importer``, to check it)."""
    with (
        _progress(quiet or sink is sys.stdout.buffer) as progress,
        cli.connect(server, keystore, token) as client,
    ):
        try:
            with client.stream("GET", f"{API}/download/{cid}") as r:
                if r.status_code != 200:
                    raise cli.refused(r, client)
                total = int(r.headers.get("content-length", "0")) or None
                task = progress.add_task(f"get {cid[:16]}…", total=total)
                for piece in r.iter_bytes(cli.PIECE):
                    sink.write(piece)
                    if importer is not None:
                        importer.write(piece)
                    progress.advance(task, len(piece))
        except httpx.HTTPError as exc:
            raise cli.fail(no_answer(client, exc, "the download")) from None


@storage_app.command("pin")
def pin_cmd(
    cid: str,
    name: Annotated[str | None, typer.Option("--name", help="Pin label.")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
) -> None:
    """Pin CID (content the server holds) for you; prints the pin."""
    with cli.connect(server, keystore, token) as client:
        r = cli.call(
            client,
            "POST",
            f"{API}/pin/{cid}",
            doing="the pin",
            json={"name": name} if name else None,
        )
    if r.status_code not in (200, 201):
        raise cli.refused(r, client)
    cli.print_json(r.json())


@storage_app.command("unpin")
def unpin_cmd(
    cid: str, server: ServerOpt = None, token: TokenOpt = None, keystore: KeystoreOpt = None
) -> None:
    """Remove your pin of CID."""
    with cli.connect(server, keystore, token) as client:
        cli.send(client, "DELETE", f"{API}/pin/{cid}", ok=204, doing="the unpin")
    typer.echo(f"unpinned {cid}", err=True)


@storage_app.command("info")
def info_cmd(
    cid: str, server: ServerOpt = None, token: TokenOpt = None, keystore: KeystoreOpt = None
) -> None:
    """CID, size, pinned, created, gateway URL."""
    with cli.connect(server, keystore, token) as client:
        r = cli.send(client, "GET", f"{API}/info/{cid}", doing="the info request")
    cli.print_json(r.json())


def _schema_not_ready(settings: Settings, status: SchemaStatus) -> str:
    """gc reads the pins of a database at this code's schema: say what to run when it is not."""
    from parity.storage.factory import database_label

    source = "" if settings.embedded else f", from {settings.database_source}"
    where = f"the database ({database_label(settings)}{source})"
    if status.current is None:
        return (
            f"{where} has no schema (no server has run on it): nothing to collect; start the "
            "server or run `parity-server migrate` first"
        )
    if status.too_new:
        return (
            f"{where} is at schema {status.current}, newer than this code's {status.head}: "
            "upgrade parity-server"
        )
    return (
        f"{where} is at schema {status.current}, older than this code's {status.head}: run "
        "`parity-server migrate` (or start the server) first"
    )


@storage_app.command("gc")
def gc_cmd(
    config: Annotated[
        str | None, typer.Option("--config", help="Path of a .env file (default ./.env)")
    ] = None,
    grace_seconds: Annotated[
        float | None,
        typer.Option(
            "--grace-seconds",
            min=0,
            help="Spare blocks younger than this (default STORAGE_GC_GRACE_SECONDS).",
        ),
    ] = None,
) -> None:
    """Remove blocks that no account pins (on this machine's database and content store)."""
    from parity.clock import SystemClock
    from parity.db import migrate
    from parity.db.session import Database
    from parity.storage.factory import open_content_store
    from parity.storage.service import collect_garbage

    try:
        settings = load_settings(config_file=config)
    except ConfigError as exc:
        raise cli.fail(str(exc), 2) from None
    grace = settings.storage_gc_grace_seconds if grace_seconds is None else grace_seconds

    async def run() -> Any:
        # A first connection that names the database when it cannot be opened (a refused
        # login, an unknown database) instead of a driver's traceback.
        status = await migrate.schema_status(settings.resolved_database_url)
        if not status.up_to_date:
            raise cli.fail(_schema_not_ready(settings, status))
        db = Database(settings.resolved_database_url, nullpool=True)
        store = open_content_store(settings)
        try:
            return await collect_garbage(db, store, SystemClock().now(), grace)
        finally:
            await store.aclose()
            await db.dispose()

    try:
        result = asyncio.run(run())
    except migrate.DatabaseUnavailable as exc:
        raise cli.fail(
            f"cannot connect to the database {exc.url} (from {settings.database_source}): "
            f"{exc.reason}"
        ) from None
    except ParityError as exc:
        raise cli.fail(exc.message) from None
    except OSError as exc:
        raise cli.fail(f"cannot reach the database or the content store: {exc}") from None
    cli.print_json(
        {
            "store": settings.filecoin_ipfs_endpoint or str(settings.blocks_path),
            "removed_blocks": result.report.removed_blocks,
            "freed_bytes": result.report.freed_bytes,
            "compacted_packs": result.report.compacted_packs,
            "merged_packs": result.report.merged_packs,
            "repinned": result.repinned,
            "missing_pinned_content": result.lost,
            "forgotten_objects": result.pruned_objects,
            "grace_seconds": grace,
        }
    )
