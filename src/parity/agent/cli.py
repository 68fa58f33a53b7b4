"""The `parity-runner` command line."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from parity.agent import RUNNER_VERSION
from parity.agent.client import ServerClient, ServerError
from parity.agent.executors import Executor
from parity.agent.executors.command import CommandExecutor, SandboxMode, detect_sandbox
from parity.agent.executors.docker import DockerExecutor, HttpDockerEngine
from parity.agent.loop import Runner, RunnerOptions
from parity.cli.keystore import KeystoreError, load_account, password_from_env_or_prompt
from parity.logging import configure_logging

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


def _account(keystore: Path) -> Any:
    try:
        return load_account(keystore, password_from_env_or_prompt(confirm=False))
    except KeystoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


Server = Annotated[
    str, typer.Option("--server", envvar="RUNNER_SERVER_URL", help="Server base URL")
]
Keystore = Annotated[
    Path,
    typer.Option("--keystore", envvar="RUNNER_KEYSTORE", help="V3 keystore (parity-server auth)"),
]


@app.callback(invoke_without_command=True)
def main_cmd(
    ctx: typer.Context,
    server: Server = "http://localhost:8080",
    keystore: Keystore = Path("~/.parity/keystore.json"),
    device_id: Annotated[str | None, typer.Option(envvar="RUNNER_DEVICE_ID")] = None,
    max_concurrent_tasks: Annotated[
        int, typer.Option(min=1, envvar="RUNNER_MAX_CONCURRENT_TASKS")
    ] = 1,
    pull: Annotated[bool, typer.Option("--pull/--no-pull", help="Long-poll for work")] = True,
    push: Annotated[bool, typer.Option("--push/--no-push", help="Accept push offers")] = True,
    push_host: Annotated[str, typer.Option(envvar="RUNNER_WEBHOOK_HOST")] = "127.0.0.1",
    push_port: Annotated[int, typer.Option(envvar="RUNNER_WEBHOOK_PORT")] = 0,
    push_public_url: Annotated[str | None, typer.Option(envvar="RUNNER_WEBHOOK_PUBLIC_URL")] = None,
    heartbeat_interval: Annotated[
        float, typer.Option(min=0.1, envvar="RUNNER_HEARTBEAT_INTERVAL_SECONDS")
    ] = 10.0,
    claim_wait: Annotated[float, typer.Option(min=0, max=30)] = 25.0,
    grace_seconds: Annotated[
        float, typer.Option(min=0, envvar="RUNNER_SHUTDOWN_GRACE_SECONDS")
    ] = 30.0,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="key=value (repeatable)")
    ] = None,
    allow_unsandboxed_commands: Annotated[
        bool, typer.Option(envvar="RUNNER_ALLOW_UNSANDBOXED_COMMANDS")
    ] = False,
    sandbox: Annotated[str | None, typer.Option(help="Force bwrap|uid|none (tests)")] = None,
    docker_socket: Annotated[
        str, typer.Option(envvar="RUNNER_DOCKER_SOCKET")
    ] = "/var/run/docker.sock",
    ollama_url: Annotated[str | None, typer.Option(envvar="RUNNER_OLLAMA_URL")] = None,
    log_level: Annotated[str, typer.Option(envvar="LOG_LEVEL")] = "info",
) -> None:
    """Run the runner until SIGTERM/SIGINT (it then finishes or releases its work)."""
    if ctx.invoked_subcommand is not None:
        return
    configure_logging(log_level, "json")
    account = _account(keystore.expanduser())
    mode = detect_sandbox(allow_unsandboxed_commands, sandbox)
    if mode == SandboxMode.NONE and not allow_unsandboxed_commands:
        typer.echo("error: --sandbox none needs --allow-unsandboxed-commands", err=True)
        raise typer.Exit(2)
    engine = HttpDockerEngine(docker_socket)
    executors: dict[str, Executor] = {}
    command = CommandExecutor(mode)
    if command.available:
        executors["command"] = command
    has_docker = asyncio.run(engine.ping())
    typer.echo(
        f"parity-runner {RUNNER_VERSION}: sandbox={mode.value} "
        f"docker={'yes' if has_docker else 'no'}",
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
        labels=_labels(label or []),
        ollama_url=ollama_url,
    )

    async def go() -> None:
        client = ServerClient(server)
        if has_docker:
            # image_cid images are streamed from the server's content store into the engine.
            executors["docker"] = DockerExecutor(engine, fetch=client.download)
        runner = Runner(options, account, client, executors, engine if has_docker else None)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop)
        try:
            await runner.run()
        finally:
            await client.close()

    try:
        asyncio.run(go())
    except ServerError as exc:
        typer.echo(f"error: server refused: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: cannot reach {server}: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def status(
    server: Server = "http://localhost:8080", keystore: Keystore = Path("~/.parity/keystore.json")
) -> None:
    """Show this wallet's runners: status, active claims, health (earnings are not priced yet)."""
    account = _account(keystore.expanduser())

    async def go() -> list[dict[str, Any]]:
        client = ServerClient(server)
        try:
            await client.sign_in(account)
            return await client.my_runners()
        finally:
            await client.close()

    try:
        runners = asyncio.run(go())
    except (ServerError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if not runners:
        typer.echo(f"no runners registered for {account.address}")
    for r in runners:
        typer.echo(
            f"{r['id']}  device={r['device_id'][:16]}  status={r['status']}  "
            f"claims={r['active_claims']}/{r['max_concurrent_tasks']}  "
            f"last_heartbeat={r['last_heartbeat']}  version={r['runner_version']}  "
            "earnings=not priced"
        )


def main() -> None:
    app()
