"""`parity-server fl`: federated-learning sessions from the command line. Create a session from
a JSON configuration (uploading its dataset through the storage API), start, watch and cancel
it, read its rounds and metrics, download its global model. Talks to a server over HTTP with the
session `parity-server auth` stored for the keystore's address (or --token); the server is
chosen by :mod:`parity.cli.server_url`. What is printed is shaped in :mod:`parity.cli.fl_view`."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.progress import DownloadColumn, MofNCompleteColumn, TimeElapsedColumn

from parity.cli import client as cli
from parity.cli import fl_view as view
from parity.cli.client import JsonOpt, KeystoreOpt, QuietOpt, ServerOpt, TokenOpt
from parity.cli.server_url import no_answer

fl_app = typer.Typer(
    name="fl",
    help="Federated learning: create, start, watch and cancel sessions; list them; read their "
    "rounds and metrics; download the global model.",
    no_args_is_help=True,
)

API = "/api/v1/federated-learning"
STORAGE_UPLOAD = "/api/v1/storage/upload"
PAGE_SIZE = 100
# `fl watch` rides out a server restart: it ends only after this many failed polls in a row
# that also span RIDE_OUT_SECONDS (a restart of the embedded server takes ~10 s on a busy
# machine; five polls at the default 2 s interval alone gave up before it was back).
MAX_POLL_ERRORS = 5
RIDE_OUT_SECONDS = 60.0
FAILED_POLL_PAUSE_SECONDS = 1.0
RETRYABLE_STATUS = frozenset({502, 503, 504})

ListJsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the sessions as one JSON array, every page merged (each session as GET "
        "sessions lists it), instead of the table.",
    ),
]
StatusJsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help='Print {"session": GET session, "latest_round": the newest of GET rounds or '
        'null, "metrics": GET metrics} as one JSON document.',
    ),
]
WatchJsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help='At the end, print {"session": GET session, "metrics": GET metrics} of the last '
        "poll as one JSON document.",
    ),
]
SessionArg = Annotated[str, typer.Argument(metavar="ID", help="The session's id.")]


def _session_path(session_id: str, *rest: str) -> str:
    return "/".join((f"{API}/sessions/{quote(session_id, safe='')}", *rest)).rstrip("/")


def _session_of(doc: Any) -> dict[str, Any]:
    """Start and cancel answer ``{"message", "session"}``; create and read the session itself."""
    inner = doc.get("session") if isinstance(doc, dict) else None
    return inner if isinstance(inner, dict) else dict(doc)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return view.parse_config(path.read_text(encoding="utf-8"), path.name)
    except (OSError, UnicodeDecodeError) as exc:
        raise cli.fail(f"cannot read {path}: {exc}", 2) from None
    except view.ConfigProblem as exc:
        raise cli.fail(str(exc), 2) from None


def _upload(client: httpx.Client, dataset: Path, quiet: bool) -> str:
    """Upload ``dataset`` (streamed, pinned under its file name) and return its CID."""
    size = dataset.stat().st_size
    with cli.progress(quiet, DownloadColumn(), soft_wrap=True) as progress:
        task = progress.add_task(f"upload {dataset.name}", total=size)
        doc = cli.request_json(
            client,
            "PUT",
            STORAGE_UPLOAD,
            ok=201,
            params={"pin": "true", "name": dataset.name},
            content=cli.file_pieces(dataset, lambda n: progress.advance(task, n)),
            headers=cli.upload_headers(size),
        )
    return str(doc["cid"])


@fl_app.command("create")
def create_cmd(
    config: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="CONFIG.json",
            help="The session's configuration: the body of POST sessions (see the README).",
        ),
    ],
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset",
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE",
            help="Upload FILE (CSV with a header row and the label last, NPZ with X and y, or "
            "JSON {features, labels}) and train on it: fills training_data.dataset_cid, and "
            "training_data.data_format from the extension when the configuration has none.",
        ),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create a session from CONFIG.json; prints its id. The session waits, pending, for
    `parity-server fl start ID`."""
    body = _read_config(config)
    if dataset is not None:
        try:
            view.check_dataset_option(body, dataset)
        except view.ConfigProblem as exc:
            raise cli.fail(str(exc), 2) from None
    with cli.connect(server, keystore, token) as client:
        if dataset is not None:
            cid = _upload(client, dataset, quiet)
            typer.echo(f"uploaded {dataset.name}: {cid}", err=True)
            body = view.with_dataset(body, cid, view.data_format_for(dataset))
        session = _session_of(
            cli.request_json(client, "POST", f"{API}/sessions", ok=201, json=body)
        )
    if as_json:
        cli.print_json(session)
        return
    typer.echo(
        f"created session {session['name']!r} ({session['status']}); "
        f"start it with `parity-server fl start {session['id']}`",
        err=True,
    )
    typer.echo(session["id"])


@fl_app.command("start")
def start_cmd(
    session_id: SessionArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start session ID: selects its participants among the online runners and opens round 1.
    Refused while too few runners advertise federated learning."""
    with cli.connect(server, keystore, token) as client:
        doc = cli.request_json(client, "POST", _session_path(session_id, "start"))
    if as_json:
        cli.print_json(doc)
        return
    session = _session_of(doc)
    typer.echo(
        f"session {session['id']} {session['status']}: "
        f"{session.get('participant_count')} participants, "
        f"round {session.get('current_round')}/{session.get('total_rounds')}"
    )


@fl_app.command("cancel")
def cancel_cmd(
    session_id: SessionArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel session ID: its open round's tasks are cancelled and what is left of its reward
    pool is released."""
    with cli.connect(server, keystore, token) as client:
        doc = cli.request_json(client, "POST", _session_path(session_id, "cancel"))
    if as_json:
        cli.print_json(doc)
        return
    session = _session_of(doc)
    typer.echo(f"session {session['id']} {session['status']}")


def _status_doc(client: httpx.Client, session_id: str) -> dict[str, Any]:
    session = cli.request_json(client, "GET", _session_path(session_id))
    rounds = cli.request_json(
        client, "GET", _session_path(session_id, "rounds"), params={"limit": 1}
    )
    metrics = cli.request_json(client, "GET", _session_path(session_id, "metrics"))
    items = rounds.get("items") or []
    return {
        "session": session,
        "latest_round": items[0] if items else None,
        "metrics": metrics,
    }


@fl_app.command("status")
def status_cmd(
    session_id: SessionArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: StatusJsonOpt = False,
) -> None:
    """Session ID: its state, its latest round and the metrics of every completed round."""
    with cli.connect(server, keystore, token) as client:
        doc = _status_doc(client, session_id)
    if as_json:
        cli.print_json(doc)
        return
    for line in view.session_lines(doc["session"]):
        typer.echo(line)
    if doc["latest_round"] is not None:
        typer.echo(view.round_line(doc["latest_round"]))
    rounds = doc["metrics"].get("rounds") or []
    if rounds:
        typer.echo("")
        for line in view.metrics_table(rounds):
            typer.echo(line)


@fl_app.command("list")
def list_cmd(
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Show this many at most (default all).")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: ListJsonOpt = False,
) -> None:
    """Your sessions, newest first (every session for an operator), page by page."""
    sessions: list[dict[str, Any]] = []
    cursor: str | None = None
    with cli.connect(server, keystore, token) as client:
        while limit is None or len(sessions) < limit:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(sessions))
            params: dict[str, Any] = {"limit": size}
            if cursor is not None:
                params["cursor"] = cursor
            page = cli.request_json(client, "GET", f"{API}/sessions", params=params)
            sessions.extend(page.get("sessions") or [])
            cursor = page.get("next_cursor")
            if not cursor:
                break
    if as_json:
        cli.print_json(sessions)
        return
    if not sessions:
        typer.echo("no sessions", err=True)
        return
    for line in view.sessions_table(sessions):
        typer.echo(line)


def _poll(client: httpx.Client, path: str) -> Any:
    """One poll of `fl watch`; None on a failure worth retrying (unreachable, restarting)."""
    try:
        r = client.get(path)
    except httpx.HTTPError:
        return None
    if r.status_code in RETRYABLE_STATUS:
        return None
    if r.status_code != 200:
        raise cli.refused(r, client)
    return r.json()


def _pause(seconds: float) -> None:
    time.sleep(seconds)


@fl_app.command("watch")
def watch_cmd(
    session_id: SessionArg,
    interval: Annotated[
        float, typer.Option("--interval", min=0, max=60, help="Seconds between polls.")
    ] = 2.0,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: WatchJsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Follow session ID until it ends: a progress bar over its rounds and a line per completed
    round with its accuracy (test accuracy where the session holds out a test split) and train
    loss, on stderr. A pending session is waited for (said once). Exits 0 when the session
    completes, 1 when it fails or is cancelled."""
    errors = 0
    failing_since = 0.0
    said_pending = False
    shown = 0
    rounds: list[dict[str, Any]] = []
    with (
        cli.connect(server, keystore, token) as client,
        cli.progress(quiet, MofNCompleteColumn(), TimeElapsedColumn(), soft_wrap=True) as progress,
    ):
        bar = progress.add_task("waiting", total=None)
        while True:
            session = _poll(client, _session_path(session_id))
            metrics = _poll(client, _session_path(session_id, "metrics")) if session else None
            if session is None or metrics is None:
                failing_since = failing_since if errors else time.monotonic()
                errors += 1
                failing = time.monotonic() - failing_since
                if errors >= MAX_POLL_ERRORS and failing >= RIDE_OUT_SECONDS:
                    raise cli.fail(
                        f"{client.base_url} did not answer {errors} polls in a row "
                        f"({failing:.0f} s)"
                    )
            else:
                errors = 0
                if session.get("status") == "pending" and not said_pending:
                    said_pending = True
                    progress.console.print(
                        view.pending_note(session), markup=False, highlight=False
                    )
                rounds = metrics.get("rounds") or []
                for m in rounds[shown:]:
                    progress.console.print(
                        view.round_summary(m, session.get("total_rounds")),
                        markup=False,
                        highlight=False,
                    )
                shown = len(rounds)
                progress.update(
                    bar,
                    total=session.get("total_rounds"),
                    completed=len(rounds),
                    description=view.watch_description(session, rounds),
                )
                if session.get("status") in view.TERMINAL:
                    break
            # A failed poll waits at least a second: --interval 0 must not spin on a server
            # that is down.
            _pause(max(interval, FAILED_POLL_PAUSE_SECONDS) if errors else interval)
    if as_json:
        cli.print_json({"session": session, "metrics": metrics})
    status = session.get("status")
    if status != "completed":
        reason = session.get("failure_reason")
        raise cli.fail(f"session {session.get('id')} {status}" + (f": {reason}" if reason else ""))
    if not as_json:
        final = f"session {session.get('id')} completed after {shown} rounds"
        typer.echo(f"{final}: {view.accuracy_text(rounds[-1])}" if rounds else final)


def _download(client: httpx.Client, session_id: str, part: Path) -> str:
    """Stream the global model into ``part``; its sha256 (hex)."""
    digest = hashlib.sha256()
    try:
        with (
            client.stream("GET", _session_path(session_id, "model", "download")) as r,
            open(part, "wb") as sink,
        ):
            if r.status_code != 200:
                raise cli.refused(r, client)
            for piece in r.iter_bytes(cli.PIECE):
                sink.write(piece)
                digest.update(piece)
    except httpx.HTTPError as exc:
        raise cli.fail(no_answer(client, exc, "the download")) from None
    return digest.hexdigest()


@fl_app.command("model")
def model_cmd(
    session_id: SessionArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Where to write it (default ./ID.safetensors; a directory: DIR/ID.safetensors).",
        ),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download session ID's latest global model (safetensors) and check its sha256 against the
    one the server records. During the session it is the latest round's (intermediate) model."""
    final = cli.output_file(output, f"{session_id}.safetensors")
    part = cli.part_file(final)
    with cli.connect(server, keystore, token) as client:
        meta = cli.request_json(client, "GET", _session_path(session_id, "model"))
        try:
            got = _download(client, session_id, part)
            if got != meta.get("sha256"):
                # A round may have completed between the two requests: read the record again,
                # and fetch the file once more when it still disagrees with the record.
                meta = cli.request_json(client, "GET", _session_path(session_id, "model"))
                if got != meta.get("sha256"):
                    got = _download(client, session_id, part)
            if got != meta.get("sha256"):
                raise cli.fail(f"the model downloaded hashes to {got}, not {meta.get('sha256')}")
            part.replace(final)
        except OSError as exc:  # the file cannot be written there: said, not a traceback
            part.unlink(missing_ok=True)
            raise cli.fail(f"cannot write {final}: {exc.strerror or exc}", 2) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    if as_json:
        cli.print_json(meta)
        return
    stage = " (intermediate)" if meta.get("intermediate") else ""
    typer.echo(
        f"round {meta.get('round')}/{meta.get('total_rounds')}{stage}, "
        f"{len(meta.get('tensors') or {})} tensors, sha256 {got} verified",
        err=True,
    )
    typer.echo(str(final))
