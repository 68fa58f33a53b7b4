"""`parity-server storage`: put, get, pin, unpin and info talk to a server over HTTP with the
session `parity-server auth --server URL` stored for the keystore's address (or --token); gc runs
on this machine against the configured database and content store, like `migrate`. The server is
chosen by the one rule of :mod:`parity.cli.server_url`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import httpx
import typer
from rich.progress import DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from parity.cli import client as cli
from parity.cli.client import KeystoreOpt, QuietOpt, ServerOpt, TokenOpt
from parity.cli.server_url import no_answer
from parity.config import load_settings
from parity.core.storage.importer import FileImporter
from parity.core.storage.multiformats import Cid, CidError
from parity.errors import ConfigError, ParityError

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
    size = file.stat().st_size
    with cli.connect(server, keystore, token) as client, _progress(quiet) as progress:
        _refuse_oversized(client, file, size)
        task = progress.add_task(f"put {file.name}", total=size)
        r = cli.call(
            client,
            "PUT",
            f"{API}/upload",
            doing="the upload",
            params={"pin": "true" if pin else "false", "name": name or file.name},
            content=cli.file_pieces(file, lambda n: progress.advance(task, n)),
            headers=cli.upload_headers(size),
        )
    if r.status_code != 201:
        raise cli.refused(r, client)
    doc = r.json()
    typer.echo(
        f"{doc['size']} bytes, pinned: {doc['pinned']}, CIDv0: {doc.get('cid_v0')}", err=True
    )
    typer.echo(doc["cid"])


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


def _open_output(output: Path | None, cid: str) -> tuple[BinaryIO, Path | None]:
    if output is not None and str(output) == "-":
        return sys.stdout.buffer, None
    path = output or Path(cid)
    part = path.with_name(path.name + ".part")
    return open(part, "wb"), path


@storage_app.command("get")
def get(
    cid: str,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write ('-' for stdout; default ./CID)."),
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
    sink, final = _open_output(output, cid)
    try:
        with (
            _progress(quiet or final is None) as progress,
            cli.connect(server, keystore, token) as client,
            client.stream("GET", f"{API}/download/{cid}") as r,
        ):
            if r.status_code != 200:
                raise cli.refused(r, client)
            total = int(r.headers.get("content-length", "0")) or None
            task = progress.add_task(f"get {cid[:16]}…", total=total)
            for piece in r.iter_bytes(cli.PIECE):
                sink.write(piece)
                if verify:
                    importer.write(piece)
                progress.advance(task, len(piece))
    except httpx.HTTPError as exc:
        raise cli.fail(no_answer(client, exc, "the download")) from None
    finally:
        if final is not None:
            sink.close()
    problem = _verify(wanted, importer) if verify else None
    if final is not None:
        part = final.with_name(final.name + ".part")
        if problem is not None:
            part.unlink(missing_ok=True)
        else:
            part.replace(final)
    if problem is not None:
        raise cli.fail(problem + " (use --no-verify for content imported with other settings)")
    if final is not None:
        typer.echo(str(final), err=True)


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
        await migrate.schema_status(settings.resolved_database_url)
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
