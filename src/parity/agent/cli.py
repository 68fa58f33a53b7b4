"""The `parity-runner` command line."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from parity.agent import RUNNER_VERSION
from parity.agent.client import ServerClient, ServerError
from parity.agent.eventloop import run_loop
from parity.agent.executors import Executor
from parity.agent.executors.command import CommandExecutor, SandboxMode, detect_sandbox
from parity.agent.executors.docker import DockerExecutor, HttpDockerEngine
from parity.agent.fl import FlExecutor, parse_dataset_specs
from parity.agent.fl.executor import trainer_named
from parity.agent.llm import (
    BackendSpec,
    LlmExecutor,
    ModelDiscovery,
    build_backend,
    parse_backend_spec,
    parse_backend_specs,
    parse_price_specs,
)
from parity.agent.loop import Runner, RunnerOptions
from parity.chain.keystore import KeystoreError, load_account, read_address
from parity.cli.auth import default_keystore_path
from parity.cli.credentials import (
    CredentialsError,
    StoredToken,
    credentials_path,
    expired,
    load_token,
    save_token,
)
from parity.cli.help_width import widen_help_without_terminal
from parity.cli.passwords import password_from_env_or_prompt
from parity.cli.plain_warnings import plain_warnings
from parity.cli.server_url import ServerChoice, ServerUrlError, failure_text, resolve_server_url
from parity.core.llm.metering import LlmPrice
from parity.heap import settle_heap
from parity.logging import configure_logging, get_logger

log = get_logger("parity.runner")

app = typer.Typer(
    name="parity-runner", help="Join a Parity network as a runner.", add_completion=False
)


def _home() -> Path:
    return Path(os.environ.get("PARITY_HOME", "~/.parity")).expanduser()


def default_device_id() -> str:
    """sha256 of /etc/machine-id, persisted under PARITY_HOME (as the original runner did)."""
    path = _home() / ".device_id"
    if path.exists():
        return path.read_text().strip()
    try:
        seed = Path("/etc/machine-id").read_text().strip()
    except OSError:
        seed = os.urandom(16).hex()
    device = hashlib.sha256(seed.encode()).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(device)
    return device


def _labels(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"label {v!r} must be key=value")
        out[k] = val
    return out


def llm_config(
    backends: list[str],
    prices: list[str],
    ollama_url: str | None,
    env: Mapping[str, str] = os.environ,
) -> tuple[list[BackendSpec], dict[str, LlmPrice]]:
    """The LLM backends and prices from the flags, else ``PARITY_LLM_BACKENDS`` /
    ``PARITY_LLM_PRICES``; ``--ollama-url`` (the older flag) adds an Ollama backend. A bad
    value is a usage error naming the flag or variable."""
    try:
        specs = parse_backend_specs(backends, env.get("PARITY_LLM_BACKENDS"))
        if ollama_url:
            specs = list(
                dict.fromkeys(
                    [*specs, parse_backend_spec(f"ollama={ollama_url}", source="--ollama-url")]
                )
            )
        price_map = parse_price_specs(prices, env.get("PARITY_LLM_PRICES"))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return specs, price_map


def fl_config(
    enabled: bool, datasets: list[str], env: Mapping[str, str] = os.environ
) -> dict[str, Path] | None:
    """The runner-local FL data sets (name -> file) from ``--fl-dataset`` flags, else
    ``PARITY_FL_DATASETS``; None when FL is off (``--no-fl``). A bad spec, or data sets with
    FL off, is a usage error."""
    if not enabled:
        if datasets:
            raise typer.BadParameter("--fl-dataset needs FL: drop --no-fl (or RUNNER_FL=0)")
        return None
    try:
        return parse_dataset_specs(datasets, env.get("PARITY_FL_DATASETS"))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _address(keystore: Path) -> str:
    """The keystore's address, read without its password: a missing file or one that is not a
    keystore is said at once, before any password prompt."""
    try:
        return read_address(keystore)
    except KeystoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _account(keystore: Path) -> Any:
    _address(keystore)
    try:
        return load_account(keystore, password_from_env_or_prompt(confirm=False))
    except KeystoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _keystore(keystore: Path | None) -> Path:
    return keystore.expanduser() if keystore is not None else default_keystore_path()


def _server(server: str | None, keystore: Path) -> ServerChoice:
    try:
        choice = resolve_server_url(
            server, credentials=credentials_path(keystore), flag_source="--server/RUNNER_SERVER_URL"
        )
    except ServerUrlError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return choice


def _pull_instead_of_push(runner: Runner, refusal: ServerError) -> None:
    """The server refused the push webhook (its SSRF guard refuses loopback and private
    addresses outside the embedded mode, as for event webhooks): stop the receiver and take work
    by long-poll, which every server serves. Runs before registration answers, so the runner
    starts its pull loop with the pull option it sets here."""
    receiver, runner.push = runner.push, None
    if receiver is not None:
        receiver.stop()
    runner.o.pull = True
    log.warning(
        "push_refused_pulling_instead",
        message="the server refused this runner's push webhook; taking work by pulling "
        "(long-poll) instead. For push offers give a URL the server can reach with "
        "--push-public-url URL; --no-push skips push",
        refusal=str(refusal),
    )


Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="RUNNER_SERVER_URL",
        metavar="URL",
        help="Server base URL (default: PARITY_SERVER_URL, else the last sign-in beside the "
        "keystore, else SERVER_PUBLIC_URL or SERVER_HOST:SERVER_PORT of the settings)",
    ),
]
Keystore = Annotated[
    Path | None,
    typer.Option(
        "--keystore",
        envvar="RUNNER_KEYSTORE",
        metavar="PATH",
        help="V3 keystore (parity-server auth; default: $PARITY_HOME/keystore.json, else "
        "~/.parity/keystore.json)",
    ),
]


class ForcedSandbox(StrEnum):
    """The sandboxes --sandbox may force (a usage error lists them)."""

    BWRAP = SandboxMode.BWRAP.value
    UID = SandboxMode.UID.value
    NONE = SandboxMode.NONE.value


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"parity-runner {RUNNER_VERSION}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_cmd(
    ctx: typer.Context,
    server: Server = None,
    keystore: Keystore = None,
    device_id: Annotated[
        str | None,
        typer.Option(
            envvar="RUNNER_DEVICE_ID",
            metavar="ID",
            help="This runner's id at the server, which keeps one runner per device id (a "
            "second registration of it takes the runner over): runners sharing a machine need "
            "one each (default: sha256 of /etc/machine-id, kept in $PARITY_HOME/.device_id)",
        ),
    ] = None,
    max_concurrent_tasks: Annotated[
        int,
        typer.Option(min=1, envvar="RUNNER_MAX_CONCURRENT_TASKS", help="Tasks run at once"),
    ] = 1,
    pull: Annotated[bool, typer.Option("--pull/--no-pull", help="Long-poll for work")] = True,
    push: Annotated[
        bool,
        typer.Option(
            "--push/--no-push",
            help="Accept push offers (when the server refuses the webhook, the runner pulls)",
        ),
    ] = True,
    push_host: Annotated[
        str,
        typer.Option(envvar="RUNNER_WEBHOOK_HOST", help="Address the push webhook listens on"),
    ] = "127.0.0.1",
    push_port: Annotated[
        int,
        typer.Option(envvar="RUNNER_WEBHOOK_PORT", help="Its port (0: any free port)"),
    ] = 0,
    push_public_url: Annotated[
        str | None,
        typer.Option(
            envvar="RUNNER_WEBHOOK_PUBLIC_URL",
            metavar="URL",
            help="Base URL the server reaches the push webhook at (a server outside the "
            "embedded mode refuses loopback and private addresses)",
        ),
    ] = None,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            min=0.1,
            envvar="RUNNER_HEARTBEAT_INTERVAL_SECONDS",
            help="Seconds between heartbeats (each renews this runner's leases). The server "
            "reads the same key as the interval its runners keep and makes leases at least 3 "
            "times it (its default 30): set once for both, they agree",
        ),
    ] = 10.0,
    claim_wait: Annotated[
        float, typer.Option(min=0, max=30, help="Seconds one long-poll for work waits")
    ] = 25.0,
    grace_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="RUNNER_SHUTDOWN_GRACE_SECONDS",
            help="On SIGTERM, seconds running work may take to finish before it is handed back",
        ),
    ] = 30.0,
    wait_for_server: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="RUNNER_WAIT_FOR_SERVER_SECONDS",
            help="At start, seconds to keep trying a server that does not answer (restarting, "
            "or started with the runner), a warning per try; 0 gives up at once",
        ),
    ] = 300.0,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="key=value (repeatable)")
    ] = None,
    allow_unsandboxed_commands: Annotated[
        bool,
        typer.Option(
            envvar="RUNNER_ALLOW_UNSANDBOXED_COMMANDS",
            help="Run command tasks without a sandbox when neither bubblewrap nor root is there "
            "(otherwise they are refused)",
        ),
    ] = False,
    sandbox: Annotated[
        ForcedSandbox | None,
        typer.Option(help="Force this sandbox for command tasks instead of detecting one (tests)"),
    ] = None,
    docker_socket: Annotated[
        str,
        typer.Option(
            envvar="RUNNER_DOCKER_SOCKET",
            metavar="PATH",
            help="The Docker Engine's socket, for docker tasks",
        ),
    ] = "/var/run/docker.sock",
    ollama_url: Annotated[
        str | None,
        typer.Option(
            envvar="RUNNER_OLLAMA_URL",
            metavar="URL",
            help="An Ollama server (the same as --llm-backend ollama=URL)",
        ),
    ] = None,
    llm_backend: Annotated[
        list[str] | None,
        typer.Option(
            "--llm-backend",
            metavar="KIND=URL",
            help="An LLM server to run llm tasks on, KIND openai (vLLM, llama.cpp server, LM "
            "Studio) or ollama (repeatable; default: PARITY_LLM_BACKENDS, comma-separated)",
        ),
    ] = None,
    llm_price: Annotated[
        list[str] | None,
        typer.Option(
            "--llm-price",
            metavar="MODEL=IN/OUT",
            help="This runner's price for MODEL per 1000 input/output tokens, in base units "
            "(repeatable; default: PARITY_LLM_PRICES, comma-separated)",
        ),
    ] = None,
    fl: Annotated[
        bool,
        typer.Option(
            "--fl/--no-fl",
            envvar="RUNNER_FL",
            help="Run federated-learning training (fl_train tasks) and advertise it",
        ),
    ] = True,
    fl_dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--fl-dataset",
            metavar="NAME=PATH",
            help="A local data set FL sessions may name (.csv with a header and the label "
            "last, .npz with X and y, or .json with features and labels); it never leaves "
            "this machine (repeatable; default: PARITY_FL_DATASETS, comma-separated)",
        ),
    ] = None,
    fl_trainer: Annotated[
        str,
        typer.Option(
            "--fl-trainer",
            metavar="numpy|torch|noop",
            envvar="RUNNER_FL_TRAINER",
            help="numpy trains; torch trains the same steps with PyTorch (installed "
            "separately); noop sends the global model back untrained with the partition's "
            "row count (for measuring pure coordination cost, never for real sessions)",
        ),
    ] = "numpy",
    log_level: Annotated[
        str, typer.Option(envvar="LOG_LEVEL", help="debug, info, warning or error (JSON on stderr)")
    ] = "info",
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Run the runner until SIGTERM/SIGINT (it then finishes or releases its work)."""
    if ctx.invoked_subcommand is not None:
        return
    configure_logging(log_level, "json")
    llm_specs, llm_prices = llm_config(llm_backend or [], llm_price or [], ollama_url)
    fl_datasets = fl_config(fl, fl_dataset or [])
    try:
        if fl_datasets is not None or fl_trainer not in ("numpy", "torch"):
            trainer_named(fl_trainer)  # with --no-fl a trainer that is not installed is unused
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fl-trainer") from None
    keystore_path = _keystore(keystore)
    chosen = _server(server, keystore_path)
    url = chosen.url
    account = _account(keystore_path)
    mode = detect_sandbox(allow_unsandboxed_commands, sandbox.value if sandbox else None)
    if mode == SandboxMode.NONE and not allow_unsandboxed_commands:
        typer.echo("error: --sandbox none needs --allow-unsandboxed-commands", err=True)
        raise typer.Exit(2)
    engine = HttpDockerEngine(docker_socket)
    executors: dict[str, Executor] = {}
    command = CommandExecutor(mode)
    if command.available:
        executors["command"] = command
    has_docker = asyncio.run(engine.ping())
    llm_names = " ".join(f"{s.kind}={s.url}" for s in llm_specs) or "none"
    fl_names = (
        "no"
        if fl_datasets is None
        else f"yes ({fl_trainer})" + "".join(f" {n}" for n in fl_datasets)
    )
    typer.echo(
        f"parity-runner {RUNNER_VERSION}: sandbox={mode.value} "
        f"docker={'yes' if has_docker else f'no (no engine at {engine.socket_path})'} "
        f"llm={llm_names} fl={fl_names}",
        err=True,
    )
    options = RunnerOptions(
        device_id=device_id or default_device_id(),
        max_concurrent_tasks=max_concurrent_tasks,
        pull=pull,
        push=push,
        push_host=push_host,
        push_port=push_port,
        push_public_url=push_public_url,
        heartbeat_interval=heartbeat_interval,
        claim_wait=claim_wait,
        grace_seconds=grace_seconds,
        startup_wait=wait_for_server,
        labels=_labels(label or []),
        # --ollama-url is one of the LLM backends: its models are discovered (and priced) there.
        ollama_url=None,
    )

    async def go() -> None:
        client = ServerClient(url)
        if has_docker:
            # image_cid images are streamed from the server's content store into the engine.
            executors["docker"] = DockerExecutor(engine, fetch=client.download)
        if fl_datasets is not None:
            # Global models and partitions come from the server's content store by CID.
            executors["fl_train"] = FlExecutor(client, fl_datasets, trainer=fl_trainer)
        models: ModelDiscovery | None = None
        if llm_specs:
            llm = LlmExecutor([build_backend(spec) for spec in llm_specs])
            executors["llm"] = llm
            models = ModelDiscovery(llm, llm_prices)
        runner = Runner(options, account, client, executors, engine if has_docker else None, models)
        client.on_push_refused = lambda refusal: _pull_instead_of_push(runner, refusal)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop)
        try:
            await runner.run()
        finally:
            if models is not None:
                await models.aclose()
            await client.close()

    settle_heap()  # what the imports built stays out of later garbage collections
    try:
        run_loop(go())
    except ServerError as exc:
        typer.echo(f"error: server refused: {exc}", err=True)
        raise typer.Exit(1) from None
    except (httpx.TransportError, OSError) as exc:
        typer.echo(f"error: cannot reach {chosen.describe()}: {failure_text(exc)}", err=True)
        raise typer.Exit(1) from None


def _earnings(address: str, balance: dict[str, Any] | ServerError) -> str:
    """One line on what this wallet's runners earned, from the server's ledger (runners earn
    for their owner's account, so the figure is the wallet's, over all its runners)."""
    if isinstance(balance, ServerError):
        if balance.code == "chain_not_configured":
            return "earnings: not priced (the server has no chain configured: work is free)"
        return f"earnings: unknown (the ledger answered {balance})"
    shown = balance.get("display") or {}
    symbol = balance.get("symbol", "")
    return (
        f"earnings of {address.lower()} (all its runners): "
        f"pending {shown.get('pending_earnings', '?')} {symbol}, "
        f"paid {shown.get('settled_earnings', '?')} {symbol}"
    )


def _stored_session(keystore: Path, url: str, address: str) -> StoredToken | None:
    """The session `parity-server auth --server` (or an earlier `status`) stored for this
    address on this server, unless it has expired."""
    try:
        stored = load_token(credentials_path(keystore), url, address)
    except CredentialsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if stored is None or expired(stored.expires_at):
        return None
    return stored


@app.command()
def status(server: Server = None, keystore: Keystore = None) -> None:
    """Show this wallet's runners (status, active claims, health) and what they earned. Uses
    the session stored beside the keystore for this server; without one (or when the server
    refuses it) it signs in with the key and stores the new session for the next call."""
    keystore_path = _keystore(keystore)
    address = _address(keystore_path)
    chosen = _server(server, keystore_path)
    url = chosen.url
    stored = _stored_session(keystore_path, url, address)

    async def go() -> tuple[list[dict[str, Any]], dict[str, Any] | ServerError]:
        client = ServerClient(url)
        try:
            runners: list[dict[str, Any]] | None = None
            if stored is not None:
                client.session_token = stored.token
                try:
                    runners = await client.my_runners()
                except ServerError as exc:
                    if exc.status != 401:  # expired early, revoked: sign in again below
                        raise
            if runners is None:
                await client.sign_in(_account(keystore_path))
                if client.session_token and client.session_expires_at:
                    _keep_session(keystore_path, url, address, client)
                runners = await client.my_runners()
            try:
                balance: dict[str, Any] | ServerError = await client.ledger_balance()
            except ServerError as exc:
                balance = exc
            return runners, balance
        finally:
            await client.close()

    try:
        runners, balance = asyncio.run(go())
    except ServerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (httpx.TransportError, OSError) as exc:
        typer.echo(f"error: cannot reach {chosen.describe()}: {failure_text(exc)}", err=True)
        raise typer.Exit(1) from None
    if not runners:
        typer.echo(f"no runners registered for {address}")
    for r in runners:
        typer.echo(
            f"{r['id']}  device={r['device_id'][:16]}  status={r['status']}  "
            f"claims={r['active_claims']}/{r['max_concurrent_tasks']}  "
            f"last_heartbeat={r['last_heartbeat']}  version={r['runner_version']}"
        )
    typer.echo(_earnings(address, balance))


def _keep_session(keystore: Path, url: str, address: str, client: ServerClient) -> None:
    """Store the session `status` signed in for, as `parity-server auth --server` does; one
    that cannot be stored costs a sign-in next time, nothing more."""
    assert client.session_token is not None and client.session_expires_at is not None
    try:
        save_token(
            credentials_path(keystore),
            url,
            address,
            client.session_token,
            client.session_expires_at,
        )
    except (CredentialsError, OSError) as exc:
        typer.echo(f"warning: the session was not stored: {exc}", err=True)


def main() -> None:
    widen_help_without_terminal()
    plain_warnings()
    app()
