"""`parity-server task`: compute tasks from the command line. Create a command (or docker) task
and optionally wait for it, streaming its logs and exiting with its outcome; list your tasks;
show one with its attempts and price; read or follow its logs; print its result; cancel it.
Talks to a server over HTTP with the session `parity-server auth` stored for the keystore's
address (or --token); the server is chosen by :mod:`parity.cli.server_url`. What is sent and
printed is shaped in :mod:`parity.cli.task_view`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from parity.cli import client as cli
from parity.cli import task_view as view
from parity.cli.client import JsonOpt, KeystoreOpt, ServerOpt, TokenOpt
from parity.cli.server_url import no_answer

task_app = typer.Typer(
    name="task",
    help="Compute tasks: create one (and wait for it), list them, show one, read or follow its "
    "logs, print its result, cancel it.",
    no_args_is_help=True,
)

API = "/api/v1/tasks"
LOG_PAGE = 1000  # the API's largest page of log chunks
# Following logs rides out a server restart or a broken connection: this many failed
# reconnections in a row end it, the pause between them doubling up to RETRY_PAUSE_MAX_S.
MAX_STREAM_ERRORS = 6
RETRY_PAUSE_S = 1.0
RETRY_PAUSE_MAX_S = 10.0
RETRYABLE_STATUS = frozenset({502, 503, 504})
# `task create --wait`: the exit status when the wait ends before the task (as timeout(1)).
EXIT_WAIT_TIMEOUT = 124

TaskArg = Annotated[str, typer.Argument(metavar="ID", help="The task's id.")]


def _id(text: str) -> str:
    try:
        return view.task_id(text)
    except view.TaskProblem as exc:
        raise cli.fail(str(exc), 2) from None


def _task_path(task_id: str, *rest: str) -> str:
    return "/".join((f"{API}/{task_id}", *rest))


class WaitTimedOut(Exception):
    """The wait's deadline passed before the task ended."""


class LogPrinter:
    """Prints the lines of each log chunk as it arrives (as JSON lines with ``as_json``), and a
    marker on stderr where a new attempt's lines begin (the task was retried)."""

    def __init__(self, *, err: bool, as_json: bool = False) -> None:
        self.err = err
        self.as_json = as_json
        self.attempt: Any = None

    def __call__(self, chunk: dict[str, Any]) -> None:
        if self.as_json:
            typer.echo(json.dumps(chunk))
            return
        attempt = chunk.get("attempt")
        if self.attempt is not None and attempt != self.attempt:
            typer.echo(f"--- attempt {attempt} ---", err=True)
        self.attempt = attempt
        for line in chunk.get("lines") or ():
            typer.echo(line, err=self.err)


def _event_json(event: view.Event) -> dict[str, Any]:
    try:
        doc = json.loads(event.data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise cli.fail(f"the server sent a {event.name} event that is not a JSON object")
    return doc


def _pause(errors: int) -> None:
    time.sleep(min(RETRY_PAUSE_S * 2 ** (errors - 1), RETRY_PAUSE_MAX_S))


def follow_logs(
    client: httpx.Client,
    task_id: str,
    on_chunk: Callable[[dict[str, Any]], None],
    *,
    after: int | None = None,
    attempt: int | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Stream the task's log chunks (``GET …/logs?follow=true``) through ``on_chunk`` until
    the ``end`` event says the task ended, and return that event's data. The stream is opened
    again from the last chunk received when the server ends it for its own time limit or a
    shutdown, or the connection breaks (:data:`MAX_STREAM_ERRORS` failures in a row end the
    command). ``deadline`` (``time.monotonic()``) raises :class:`WaitTimedOut` once passed."""

    def past_deadline() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    errors = 0
    answered = False
    while True:
        if past_deadline():
            raise WaitTimedOut
        read = cli.READ_TIMEOUT_S
        if deadline is not None:
            read = min(read, max(deadline - time.monotonic(), 0.001))
        params: dict[str, Any] = {"follow": "true"}
        if after is not None:
            params["after"] = after
        if attempt is not None:
            params["attempt"] = attempt
        failure: httpx.HTTPError | None = None
        streaming = False
        try:
            with client.stream(
                "GET",
                _task_path(task_id, "logs"),
                params=params,
                timeout=httpx.Timeout(read, connect=cli.CONNECT_TIMEOUT_S),
            ) as r:
                if r.status_code in RETRYABLE_STATUS and answered:
                    failure = httpx.HTTPError(f"HTTP {r.status_code}")
                elif r.status_code != 200:
                    raise cli.refused(r, client)
                else:
                    answered = streaming = True
                    for event in view.server_events(r.iter_lines()):
                        if event.name == "log":
                            on_chunk(_event_json(event))
                            errors = 0
                            if event.id is not None and event.id.isdigit():
                                after = int(event.id)
                        elif event.name == "end":
                            end = _event_json(event)
                            if isinstance(end.get("next_after"), int):
                                after = end["next_after"]
                            reason = end.get("reason")
                            if reason == "task_ended":
                                return end
                            if reason == "unauthenticated":
                                raise cli.fail(
                                    "the session ended while following the logs: sign in "
                                    "again with `parity-server auth --server URL`"
                                )
                            if reason == "shutdown":
                                failure = httpx.HTTPError("the server is shutting down")
                            break  # "timeout": the stream's own limit, open it again
                        if past_deadline():
                            raise WaitTimedOut
                    else:
                        failure = httpx.HTTPError("the stream ended without its end event")
        except httpx.ReadTimeout as exc:
            if past_deadline():
                raise WaitTimedOut from None
            if streaming:
                continue  # no log line for a while: open the stream again from the last one
            if not answered:
                raise cli.fail(no_answer(client, exc, "following the logs")) from None
            failure = exc
        except httpx.HTTPError as exc:
            if not answered:
                raise cli.fail(no_answer(client, exc, "following the logs")) from None
            failure = exc
        if failure is not None:
            errors += 1
            if errors >= MAX_STREAM_ERRORS:
                raise cli.fail(no_answer(client, failure, "following the logs")) from None
            _pause(errors)


@task_app.command("create", context_settings={"allow_interspersed_args": False})
def create_cmd(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="CMD ARGS",
            help="The command to run: a program and its arguments, run without a shell. "
            "Options of this command come before it; put -- before a command whose own "
            "options start with -.",
        ),
    ] = None,
    title: Annotated[
        str | None,
        typer.Option("--title", "-t", help="The task's title (default: the command line)."),
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="A longer description.")
    ] = None,
    command_json: Annotated[
        str | None,
        typer.Option(
            "--command-json",
            metavar="JSON",
            help='The command as a JSON array of strings, e.g. \'["sh", "-c", "echo $HOME"]\' '
            "(instead of CMD ARGS).",
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            metavar="IMAGE",
            help="Make it a docker task running IMAGE (a docker reference, e.g. "
            "python:3.12-slim); CMD then overrides the image's own command.",
        ),
    ] = None,
    image_cid: Annotated[
        str | None,
        typer.Option(
            "--image-cid",
            metavar="CID",
            help="Make it a docker task running the image tar stored under CID "
            "(`parity-server storage put image.tar`).",
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", "-e", metavar="KEY=VALUE", help="An environment variable (repeatable)."
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            metavar="KEY=VALUE",
            help="A label the runner must have, with this value (repeatable).",
        ),
    ] = None,
    timeout: Annotated[
        int | None,
        typer.Option(
            "--timeout",
            min=1,
            max=86400,
            metavar="SECONDS",
            help="The run's time limit (timeout_seconds), enforced by the runner and the server.",
        ),
    ] = None,
    cpu_cores: Annotated[
        float | None,
        typer.Option("--cpu-cores", min=0, max=1024, help="CPU cores the runner must have free."),
    ] = None,
    memory_mb: Annotated[
        int | None,
        typer.Option("--memory-mb", min=0, help="Memory (MB) the runner must have free."),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", min=0, max=64, help="GPUs the runner must have free.")
    ] = None,
    network: Annotated[
        bool, typer.Option("--network", help="Let the command reach the network (off by default).")
    ] = False,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            min=1,
            max=20,
            help="Runs before it fails for good (default 3; a run given back untouched by its "
            "runner does not count).",
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority", min=-1000, max=1000, help="Higher runs first among pending tasks."
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="Sent as Idempotency-Key: the same key again answers the task created first "
            "instead of creating another (24 h).",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            "--follow",
            "-w",
            help="Stream its logs (on stderr) until it ends, print its output and exit with its "
            "outcome.",
        ),
    ] = False,
    wait_timeout: Annotated[
        float | None,
        typer.Option(
            "--wait-timeout",
            min=0,
            metavar="SECONDS",
            help=f"Stop waiting after this long and exit {EXIT_WAIT_TIMEOUT} (the task goes "
            "on); implies --wait. Default: wait until it ends.",
        ),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a task that runs CMD ARGS on a runner (a docker task with --image); prints its
    id. With --wait: its log lines on stderr as they come, then its output on stdout; exits 0
    when it completes, with the process's exit code (1-255) when it fails (1 when there is
    none), 1 when it is cancelled, and 124 when --wait-timeout passes first."""
    try:
        body = view.create_body(
            view.CreateOptions(
                argv=view.command_argv(command or [], command_json),
                title=title,
                description=description,
                image=image,
                image_cid=image_cid,
                env=view.pairs("--env", env or []),
                labels=view.pairs("--label", label or []),
                timeout_seconds=timeout,
                cpu_cores=cpu_cores,
                memory_mb=memory_mb,
                gpus=gpus,
                network=network,
                max_attempts=max_attempts,
                priority=priority,
            )
        )
    except view.TaskProblem as exc:
        raise cli.fail(str(exc), 2) from None
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    wait = wait or wait_timeout is not None
    with cli.connect(server, keystore, token) as client:
        task = cli.request_json(client, "POST", API, ok=201, json=body, headers=headers)
        if not wait:
            if as_json:
                cli.print_json(task)
                return
            typer.echo(
                f"created task {task['id']} ({task['status']}); follow it with "
                f"`parity-server task logs {task['id']} --follow`",
                err=True,
            )
            typer.echo(task["id"])
            return
        typer.echo(
            f"created task {task['id']} ({task['status']}); waiting for it "
            "(Ctrl-C stops the wait, not the task)",
            err=True,
        )
        _say_why_it_waits(client, task["id"])
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        try:
            follow_logs(client, task["id"], LogPrinter(err=True), deadline=deadline)
        except WaitTimedOut:
            raise cli.fail(
                f"task {task['id']} did not end within {wait_timeout:g} s (--wait-timeout); it "
                f"goes on: `parity-server task logs {task['id']} --follow` to follow it",
                EXIT_WAIT_TIMEOUT,
            ) from None
        _finish(client, task["id"], as_json)


def _say_why_it_waits(client: httpx.Client, task_id: str) -> None:
    """A note on stderr when no online runner is big enough for the new task (it would wait
    with nothing to show for it)."""
    task = cli.request_json(client, "GET", _task_path(task_id))
    if task.get("waiting_for"):
        typer.echo(f"note: {task['waiting_for']}; it stays pending until one is", err=True)


def _finish(client: httpx.Client, task_id: str, as_json: bool) -> None:
    """The end of a wait: the output of a completed task on stdout (exit 0), else the reason
    on stderr and the exit status of its outcome."""
    task = cli.request_json(client, "GET", _task_path(task_id))
    status = task.get("status")
    result = (
        cli.request_json(client, "GET", _task_path(task_id, "result"))
        if status == "completed"
        else None
    )
    attempts: list[dict[str, Any]] = []
    if status != "completed":
        attempts = cli.request_json(client, "GET", _task_path(task_id, "attempts"))
    if as_json:
        cli.print_json({"task": task, "result": result})
    if result is not None:
        if not as_json:
            _write_output(result)
        _result_notes(result)
        return
    reason = task.get("last_error")
    message = f"task {task_id} {status}" + (f": {reason}" if reason else "")
    code = view.process_exit_code(attempts) if status == "failed" else None
    raise cli.fail(message, code or 1)


def _write_output(result: dict[str, Any]) -> None:
    output = result.get("output") or ""
    sys.stdout.write(output)
    sys.stdout.flush()


def _result_notes(result: dict[str, Any]) -> None:
    """What stderr says beside a result: its exit code and run time, where the whole output
    is when only its start is inline, and the runner's note."""
    seconds = result.get("execution_time_seconds")
    took = f", {seconds:.3g} s" if isinstance(seconds, int | float) else ""
    typer.echo(f"exit code {result.get('exit_code')}{took}", err=True)
    cid = result.get("output_cid")
    if cid:
        typer.echo(
            f"the output printed is its start; the whole output is {cid}: "
            f"`parity-server storage get {cid} -o FILE`",
            err=True,
        )
    if result.get("error"):
        typer.echo(f"note: {result['error']}", err=True)


@task_app.command("list")
def list_cmd(
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            metavar="STATUS",
            help=f"Only tasks in this status (repeatable): {', '.join(view.STATUSES)}.",
        ),
    ] = None,
    task_type: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            metavar="TYPE",
            help="Only tasks of this type (repeatable): command, docker; llm and fl_train show "
            "the rows of your prompts and FL sessions.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=500, help="Tasks on this page.")
    ] = 50,
    offset: Annotated[
        int, typer.Option("--offset", min=0, help="Skip this many (the next page's offset).")
    ] = 0,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your tasks (every task for an operator), newest first, one page: --limit at --offset;
    stderr says how many there are and the next page's --offset."""
    unknown = sorted(set(status or ()) - set(view.STATUSES))
    if unknown:
        raise cli.fail(
            f"--status {unknown[0]!r} is not a task status; use one of {', '.join(view.STATUSES)}",
            2,
        )
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status
    if task_type:
        params["type"] = task_type
    with cli.connect(server, keystore, token) as client:
        r = cli.send(client, "GET", API, params=params)
        tasks = cli.json_answer(client, r, "GET", API)
    total_header = r.headers.get("X-Total-Count", "")
    total = int(total_header) if total_header.isdigit() else None
    if as_json:
        cli.print_json(tasks)
    elif tasks:
        for line in view.tasks_table(tasks):
            typer.echo(line)
    typer.echo(view.page_note(offset, len(tasks), total), err=True)


@task_app.command("show")
def show_cmd(
    task_id: TaskArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Task ID: its status, command, runner, attempts, times and price, then a line per
    attempt (runner, outcome, exit code, error)."""
    task_id = _id(task_id)
    with cli.connect(server, keystore, token) as client:
        task = cli.request_json(client, "GET", _task_path(task_id))
        attempts = cli.request_json(client, "GET", _task_path(task_id, "attempts"))
        reward = cli.request_json(client, "GET", _task_path(task_id, "reward"))
    if as_json:
        cli.print_json({"task": task, "attempts": attempts, "reward": reward})
        return
    for line in view.task_lines(task, reward):
        typer.echo(line)
    if attempts:
        typer.echo("")
        for line in view.attempts_table(attempts):
            typer.echo(line)


@task_app.command("logs")
def logs_cmd(
    task_id: TaskArg,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing lines as they come until the task ends."
        ),
    ] = False,
    attempt: Annotated[
        int | None, typer.Option("--attempt", min=1, help="Only this attempt's lines.")
    ] = None,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            min=0,
            metavar="CURSOR",
            help="Start after this position (the next_after of an earlier read).",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            help="Read this many log chunks at most (default all); stderr says where to go "
            "on. Not with --follow.",
        ),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print task ID's log lines. With --follow, the lines stored so far and then each new one
    as the runner sends it, until the task ends (--json: one JSON object a chunk, then the
    end event)."""
    task_id = _id(task_id)
    if follow and limit is not None:
        raise cli.fail("--limit cannot be combined with --follow", 2)
    with cli.connect(server, keystore, token) as client:
        if follow:
            end = follow_logs(
                client,
                task_id,
                LogPrinter(err=False, as_json=as_json),
                after=after,
                attempt=attempt,
            )
            if as_json:
                typer.echo(json.dumps({"end": end}))
            else:
                typer.echo(f"task {task_id} {end.get('status')}", err=True)
            return
        doc = _stored_logs(client, task_id, attempt, after, limit)
    if as_json:
        cli.print_json(doc)
    else:
        printer = LogPrinter(err=False)
        for chunk in doc["items"]:
            printer(chunk)
    if doc["truncated"]:
        typer.echo("the server stopped storing this task's logs at its limit", err=True)
    if limit is not None and len(doc["items"]) >= limit and doc["next_after"] is not None:
        typer.echo(
            f"stopped at --limit {limit}; read on with --after {doc['next_after']}", err=True
        )


def _stored_logs(
    client: httpx.Client, task_id: str, attempt: int | None, after: int | None, limit: int | None
) -> dict[str, Any]:
    """The stored log chunks page by page, as one document of the API's shape."""
    items: list[dict[str, Any]] = []
    truncated = False
    next_after = after
    while limit is None or len(items) < limit:
        size = LOG_PAGE if limit is None else min(LOG_PAGE, limit - len(items))
        params: dict[str, Any] = {"limit": size}
        if next_after is not None:
            params["after"] = next_after
        if attempt is not None:
            params["attempt"] = attempt
        page = cli.request_json(client, "GET", _task_path(task_id, "logs"), params=params)
        got = page.get("items") or []
        items.extend(got)
        truncated = truncated or bool(page.get("truncated"))
        next_after = page.get("next_after")
        if len(got) < size:
            break
    return {"task_id": task_id, "items": items, "next_after": next_after, "truncated": truncated}


@task_app.command("result")
def result_cmd(
    task_id: TaskArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="FILE", help="Write the output to FILE (default stdout)."
        ),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the output of task ID's accepted result (a completed task); its exit code and run
    time on stderr, and the CID of the whole output where only its start is inline (with -o,
    FILE gets the whole output, downloaded from that CID)."""
    task_id = _id(task_id)
    with cli.connect(server, keystore, token) as client:
        result = cli.request_json(client, "GET", _task_path(task_id, "result"))
    if as_json:
        cli.print_json(result)
        return
    if output is None:
        _write_output(result)
    elif result.get("output_cid"):
        # Only the output's start is inline: the file gets all of it, checked against its CID.
        from parity.cli import storage as storage_cli

        storage_cli.get(
            result["output_cid"], output=output, server=server, token=token, keystore=keystore
        )
        _result_notes({**result, "output_cid": None})
        return
    else:
        data = (result.get("output") or "").encode()
        try:
            output.write_bytes(data)
        except OSError as exc:
            raise cli.fail(f"cannot write {output}: {exc}") from None
        typer.echo(f"wrote {len(data)} bytes to {output}", err=True)
    _result_notes(result)


@task_app.command("cancel")
def cancel_cmd(
    task_id: TaskArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel task ID: a pending or assigned task ends cancelled at once; a running one is
    cancel_requested until its runner stops it."""
    task_id = _id(task_id)
    with cli.connect(server, keystore, token) as client:
        task = cli.request_json(client, "DELETE", _task_path(task_id))
    if as_json:
        cli.print_json(task)
        return
    if task.get("status") == "cancel_requested":
        typer.echo(f"task {task_id} cancel_requested: its runner is told to stop it")
    else:
        typer.echo(f"task {task_id} {task.get('status')}")
