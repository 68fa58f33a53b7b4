"""`parity-server task create/list/show/logs/result/cancel`.

Against a real server process, the test playing the runner over HTTP: a task created with its
options, run, then shown, its logs read (stored, paged and followed) and its result printed;
`create --wait` streaming the logs and exiting with the outcome (completed, failed with the
process's exit code, cancelled during the wait, a wait that times out); list pages, cancel,
idempotency. User mistakes (bad KEY=VALUE, no command, a bad or unknown id, an unreachable
server, no session) end with one `error:` line and their exit status. What a live server does
not produce on demand (a follow stream cut by the server's time limit, a shutdown, a broken
connection) runs against a scripted stand-in through an httpx MockTransport."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from parity.cli import tasks as task_cli
from parity.cli.main import app as cli_app
from tests.e2e.procs import ServerProcess, free_port
from tests.integration.cli_support import answer_from, cli_env, cli_for, register_runner
from tests.integration.cli_support import server_fixture as server_fixture  # the `server` fixture

V1 = "/api/v1"


def _one_error_line(result: Result) -> str:
    """The command's one-line error (and nothing else on stderr)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _register_runner(url: str, token: str, device_id: str, **labels: str) -> str:
    capabilities = {"cpu_cores": 4, "memory_mb": 8192}
    return register_runner(
        url, token, device_id=device_id, capabilities=capabilities, labels=labels
    )


def _run(
    url: str,
    runner_token: str,
    task_id: str,
    chunks: list[list[str]],
    *,
    output: str | None = None,
    output_cid: str | None = None,
    error: str | None = None,
    exit_code: int | None = None,
) -> None:
    """Claim ``task_id`` (started), send ``chunks`` as its log batches, then complete it with
    ``output`` (and ``output_cid``) or, given ``error``, fail it."""
    headers = {"Authorization": f"Bearer {runner_token}"}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
        r = http.post(f"{V1}/runners/tasks/{task_id}/claim", params={"start": "true"})
        assert r.status_code == 200, r.text
        claim_token = r.json()["claim_token"]
        for seq, lines in enumerate(chunks):
            r = http.post(
                f"{V1}/runners/tasks/{task_id}/logs",
                json={"claim_token": claim_token, "seq": seq, "lines": lines},
            )
            assert r.status_code == 200, r.text
        if error is None:
            body: dict[str, Any] = {"claim_token": claim_token, "output": output, "exit_code": 0}
            if output_cid is not None:
                body["output_cid"] = output_cid
            r = http.post(f"{V1}/runners/tasks/{task_id}/complete", json=body)
        else:
            body = {"claim_token": claim_token, "error": error, "exit_code": exit_code}
            r = http.post(f"{V1}/runners/tasks/{task_id}/fail", json=body)
        assert r.status_code == 200, r.text


def _pending_titled(url: str, token: str, title: str) -> str:
    """The id of the pending task called ``title``, once `create --wait` has created it."""
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=url, timeout=10) as http:
        while time.monotonic() < deadline:
            r = http.get(
                f"{V1}/tasks",
                params={"status": "pending"},
                headers={"Authorization": f"Bearer {token}"},
            )
            for task in r.json():
                if task["title"] == title:
                    return str(task["id"])
            time.sleep(0.05)
    raise AssertionError(f"no pending task {title!r} appeared")


class Background:
    """Plays its part (a runner, a client cancelling) in a thread while the command waits;
    an assertion that fails there is raised again in the test."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.failure: BaseException | None = None

        def guarded() -> None:
            try:
                work()
            except BaseException as exc:
                self.failure = exc

        self.thread = threading.Thread(target=guarded)

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=60)
        if self.failure is not None:
            raise self.failure


def test_create_run_and_read_a_task_from_the_command_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = cli_env(server)
    cli = cli_for("task", env)
    auth = {"Authorization": f"Bearer {env['PARITY_TOKEN']}"}
    runner_token = _register_runner(server.url, env["PARITY_TOKEN"], "task-cli-1", zone="eu")

    created = cli(
        "create",
        "--title", "hello",
        "-e", "GREETING=hi=there",
        "-e", "EMPTY=",
        "-l", "zone=eu",
        "--timeout", "60",
        "--cpu-cores", "1",
        "--memory-mb", "256",
        "--", "echo", "-n", "hello world",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    task_id = created.stdout.strip()
    assert str(uuid.UUID(task_id)) == task_id
    assert f"created task {task_id} (pending)" in created.stderr
    assert f"parity-server task logs {task_id} --follow" in created.stderr
    with httpx.Client(base_url=server.url, timeout=10, headers=auth) as http:
        task = http.get(f"{V1}/tasks/{task_id}").json()
    assert (task["title"], task["type"]) == ("hello", "command")
    assert task["config"]["command"] == ["echo", "-n", "hello world"]
    assert task["config"]["env"] == {"GREETING": "hi=there", "EMPTY": ""}
    assert task["labels"] == {"zone": "eu"} and task["timeout_seconds"] == 60
    assert task["resources"]["cpu_cores"] == 1 and task["resources"]["memory_mb"] == 256

    no_result = cli("result", task_id)
    assert no_result.exit_code == 1 and "result_not_found" in _one_error_line(no_result)

    _run(
        server.url,
        runner_token,
        task_id,
        [["line one", "line two"], ["line three"]],
        output="hello world",
    )

    shown = cli("show", task_id)
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert re.search(rf"^task\s+{task_id}\s+hello$", out, re.M)
    assert re.search(r"^status\s+completed$", out, re.M)
    assert re.search(r"^type\s+command: echo -n 'hello world'$", out, re.M)
    assert re.search(r"^attempts\s+1 of 3$", out, re.M)
    assert re.search(r"^labels\s+zone=eu$", out, re.M)
    assert re.search(r"^timeout\s+60 s$", out, re.M)
    assert re.search(r"^price\s+not priced$", out, re.M)
    runner_id = re.search(r"^runner\s+(\S+)$", out, re.M)
    assert runner_id is not None and runner_id.group(1) != "-"
    table = out.splitlines()[out.splitlines().index("") + 1 :]
    assert table[0].split() == ["ATTEMPT", "RUNNER", "CLAIMED", "ENDED", "OUTCOME", "EXIT", "ERROR"]
    assert table[1].split()[:2] == ["1", runner_id.group(1)]
    assert table[1].split()[-3:] == ["completed", "0", "-"]
    as_json = json.loads(cli("show", task_id, "--json").stdout)
    assert as_json["task"]["status"] == "completed"
    assert as_json["attempts"][0]["outcome"] == "completed"
    assert as_json["reward"]["status"] == "not_priced"

    logs = cli("logs", task_id)
    assert logs.exit_code == 0, logs.output
    assert logs.stdout == "line one\nline two\nline three\n"
    first = cli("logs", task_id, "--limit", "1")
    assert first.stdout == "line one\nline two\n"
    cursor = re.search(r"read on with --after (\d+)", first.stderr)
    assert cursor is not None
    rest = cli("logs", task_id, "--after", cursor.group(1))
    assert rest.stdout == "line three\n"
    stored = json.loads(cli("logs", task_id, "--json").stdout)
    assert [c["lines"] for c in stored["items"]] == [["line one", "line two"], ["line three"]]
    assert stored["truncated"] is False

    followed = cli("logs", task_id, "--follow")
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == "line one\nline two\nline three\n"
    assert f"task {task_id} completed" in followed.stderr
    events = [json.loads(line) for line in cli("logs", task_id, "-f", "--json").stdout.splitlines()]
    assert [e.get("seq") for e in events[:2]] == [0, 1]
    assert events[-1]["end"]["reason"] == "task_ended"
    assert events[-1]["end"]["status"] == "completed"

    result = cli("result", task_id)
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello world"
    assert "exit code 0" in result.stderr
    target = tmp_path / "out.txt"
    written = cli("result", task_id, "-o", str(target))
    assert written.exit_code == 0 and written.stdout == ""
    assert target.read_text() == "hello world"
    assert f"wrote 11 bytes to {target}" in written.stderr
    assert json.loads(cli("result", task_id, "--json").stdout)["output"] == "hello world"

    # An output above the inline 64 KiB: stdout shows its start, -o writes all of it.
    big_output = "".join(f"row {i:06d}\n" for i in range(10_000))  # 110,000 bytes
    big_id = cli("create", "-t", "big", "--", "true").stdout.strip()
    with httpx.Client(base_url=server.url, timeout=30, headers=auth) as http:
        # As the runner does: the whole output into the content store, its start inline.
        r = http.put(f"{V1}/storage/upload", content=big_output.encode())
        assert r.status_code in (200, 201), r.text
        _run(server.url, runner_token, big_id, [], output=big_output, output_cid=r.json()["cid"])
    start = cli("result", big_id)
    assert start.exit_code == 0 and start.stdout.startswith(big_output[:60_000])
    assert "[output truncated: 110000 bytes" in start.stdout
    assert "the whole output is" in start.stderr
    whole = tmp_path / "big.txt"
    got = cli("result", big_id, "-o", str(whole))
    assert got.exit_code == 0, got.output
    assert whole.read_text() == big_output
    assert "exit code 0" in got.stderr and "the whole output is" not in got.stderr

    listed = cli("list", "--status", "completed")
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "TYPE", "ATTEMPTS", "CREATED", "TITLE"]
    assert [r.split()[-1] for r in rows] == ["big", "hello"]  # newest first
    row = rows[1]
    assert row.split()[:4] == [task_id, "completed", "command", "1/3"]
    assert row.split()[-1] == "hello"

    finished = cli("cancel", task_id)
    assert finished.exit_code == 1 and "task_not_cancellable" in _one_error_line(finished)


def test_create_wait_streams_the_logs_and_exits_with_the_outcome(server: ServerProcess) -> None:
    env = cli_env(server)
    cli = cli_for("task", env)
    user = env["PARITY_TOKEN"]
    runner_token = _register_runner(server.url, user, "task-cli-2")

    def runner(title: str, chunks: list[list[str]], **outcome: Any) -> Background:
        return Background(
            lambda: _run(
                server.url,
                runner_token,
                _pending_titled(server.url, user, title),
                chunks,
                **outcome,
            )
        )

    with runner("ok", [["working"], ["done"]], output="hi\n"):
        ok = cli("create", "--title", "ok", "--wait", "--", "echo", "hi")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == "hi\n"
    assert ok.stderr.splitlines()[1:3] == ["working", "done"]
    assert "exit code 0" in ok.stderr

    with runner("exit 3", [["boom"]], error="exit code 3", exit_code=3):
        failed = cli(
            "create", "-t", "exit 3", "--max-attempts", "1", "--follow",
            "--command-json", '["sh", "-c", "echo boom; exit 3"]',
        )  # fmt: skip
    assert failed.exit_code == 3
    assert failed.stdout == ""
    assert "boom" in failed.stderr.splitlines()
    assert re.search(r"^error: task \S+ failed: exit code 3$", failed.stderr, re.M)

    with runner("lost", [], error="the runner lost the sandbox"):
        lost = cli("create", "-t", "lost", "--max-attempts", "1", "-w", "--json", "--", "true")
    assert lost.exit_code == 1
    assert json.loads(lost.stdout)["task"]["status"] == "failed"
    assert "failed: the runner lost the sandbox" in lost.stderr

    def cancel_it() -> None:
        task_id = _pending_titled(server.url, user, "doomed")
        r = httpx.delete(
            f"{server.url}{V1}/tasks/{task_id}", headers={"Authorization": f"Bearer {user}"}
        )
        assert r.status_code == 200, r.text

    with Background(cancel_it):
        cancelled = cli("create", "-t", "doomed", "--wait", "--", "true")
    assert cancelled.exit_code == 1
    assert re.search(r"^error: task \S+ cancelled", cancelled.stderr, re.M)

    # No runner takes it: the wait gives up, the task goes on.
    slow = cli("create", "-t", "slow", "--wait-timeout", "0.5", "--", "sleep", "1")
    assert slow.exit_code == task_cli.EXIT_WAIT_TIMEOUT
    message = slow.stderr.splitlines()[-1]
    assert message.startswith("error: task ") and "did not end within 0.5 s" in message
    slow_id = message.split()[2]
    assert json.loads(cli("show", slow_id, "--json").stdout)["task"]["status"] == "pending"
    assert "note:" not in slow.stderr  # the runner is big enough: it is only not claiming

    # No online runner is big enough: the wait says so at once, and so does `show`.
    big = cli("create", "-t", "big", "--gpus", "1", "--wait-timeout", "0.5", "--", "true")
    assert big.exit_code == task_cli.EXIT_WAIT_TIMEOUT
    note = "no online runner is big enough for it: it needs gpus >= 1"
    assert f"note: {note}; it stays pending until one is" in big.stderr.splitlines()
    big_id = big.stderr.splitlines()[-1].split()[2]
    assert f"waiting    {note}" in cli("show", big_id).stdout.splitlines()

    # A task followed while it runs: every line, then the end.
    created = cli("create", "-t", "followed", "--", "true")
    followed_id = created.stdout.strip()
    with Background(
        lambda: _run(server.url, runner_token, followed_id, [["a"], ["b"], ["c"]], output="")
    ):
        followed = cli("logs", followed_id, "--follow")
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == "a\nb\nc\n"
    assert f"task {followed_id} completed" in followed.stderr


def test_list_pages_cancel_and_idempotency(server: ServerProcess) -> None:
    env = cli_env(server)
    cli = cli_for("task", env)
    ids = []
    for i in range(5):
        created = cli("create", "--title", f"t{i}", "--", "true")
        assert created.exit_code == 0, created.output
        ids.append(created.stdout.strip())

    page = cli("list", "--limit", "2")
    assert page.exit_code == 0, page.output
    assert [row.split()[0] for row in page.stdout.splitlines()[1:]] == [ids[4], ids[3]]
    assert page.stderr.strip() == "tasks 1-2 of 5; next page: --offset 2"
    last = cli("list", "--limit", "2", "--offset", "4")
    assert [row.split()[0] for row in last.stdout.splitlines()[1:]] == [ids[0]]
    assert last.stderr.strip() == "tasks 5-5 of 5"
    beyond = cli("list", "--offset", "9")
    assert beyond.exit_code == 0 and beyond.stdout == ""
    assert beyond.stderr.strip() == "no tasks at offset 9 (of 5)"
    everything = json.loads(cli("list", "--json").stdout)
    assert [t["id"] for t in everything] == ids[::-1]

    cancelled = cli("cancel", ids[2])
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.strip() == f"task {ids[2]} cancelled"
    only = cli("list", "--status", "cancelled", "--json")
    assert [t["id"] for t in json.loads(only.stdout)] == [ids[2]]
    pending = json.loads(cli("list", "-s", "pending", "-s", "running", "--json").stdout)
    assert len(pending) == 4
    bad_status = cli("list", "--status", "done")
    assert bad_status.exit_code == 2 and "'done' is not a task status" in _one_error_line(
        bad_status
    )
    again = cli("cancel", ids[2], "--json")  # a repeated cancel answers the cancelled task
    assert again.exit_code == 0 and json.loads(again.stdout)["status"] == "cancelled"

    first = cli("create", "--idempotency-key", "k-1", "--json", "--", "echo", "once")
    second = cli("create", "--idempotency-key", "k-1", "--json", "--", "echo", "once")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert json.loads(first.stdout)["id"] == json.loads(second.stdout)["id"]
    assert json.loads(first.stdout)["title"] == "echo once"  # the command line as title
    assert len(json.loads(cli("list", "--json").stdout)) == 6

    unknown = str(uuid.uuid4())
    for command in ("show", "logs", "result", "cancel"):
        result = cli(command, unknown)
        assert result.exit_code == 1, (command, result.output)
        assert _one_error_line(result) == f"error: task {unknown} not found (task_not_found)"
    follow = cli("logs", unknown, "--follow")
    assert follow.exit_code == 1 and "task_not_found" in _one_error_line(follow)

    refused = cli("create", "--command-json", '["true"]', "--priority", "5", "--env", "1X=y")
    assert refused.exit_code == 1
    assert "config.env.1X" in _one_error_line(refused)


# Mistakes the command catches before it sends anything, and a server it cannot reach.


def _offline_cli(*args: str, url: str = "http://127.0.0.1:9", token: str | None = "t") -> Result:
    env = {"PARITY_SERVER_URL": url}
    if token is not None:
        env["PARITY_TOKEN"] = token
    return CliRunner().invoke(cli_app, ["task", *args], env=env)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["create", "--env", "FOO", "--", "true"], "--env 'FOO': expected KEY=VALUE"),
        (["create", "--label", "=eu", "--", "true"], "--label '=eu': expected KEY=VALUE"),
        (["create", "--title", "x"], "no command: give it after --"),
        (["create", "--command-json", '{"sh": 1}'], "must be a JSON array of strings"),
        (["create", "--command-json", "[sh"], "--command-json is not JSON"),
        (["create", "--command-json", "[]"], "must not be an empty array"),
        (["create", "--command-json", '["a"]', "--", "b"], "not both"),
        (["create", "--image", "alpine", "--image-cid", "bafy"], "--image or --image-cid"),
        (["show", "nope"], "'nope' is not a task id (a UUID)"),
        (["logs", "nope", "--follow"], "'nope' is not a task id"),
        (["logs", str(uuid.uuid4()), "--follow", "--limit", "3"], "cannot be combined"),
    ],
)
def test_mistakes_are_one_line_errors_exiting_2(args: list[str], says: str) -> None:
    result = _offline_cli(*args)
    assert result.exit_code == 2
    assert says in _one_error_line(result)


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["show", str(uuid.uuid4())],
        ["logs", str(uuid.uuid4()), "--follow"],
        ["create", "--wait", "--", "true"],
    ],
)
def test_an_unreachable_server_is_one_line_exiting_1(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _offline_cli(*args, url=url)
    assert result.exit_code == 1
    assert f"cannot reach {url}" in _one_error_line(result)


def test_without_a_session_the_error_says_how_to_sign_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARITY_HOME", str(tmp_path))
    result = _offline_cli("list", url="http://x.test", token=None)
    assert result.exit_code == 1
    assert "parity-server auth --server http://x.test" in _one_error_line(result)


@pytest.mark.parametrize(
    "args",
    [["task", "list"], ["llm", "models"], ["fl", "list"], ["storage", "info", "bafkqaaa"]],
)
def test_an_empty_token_means_the_stored_session_in_every_client_group(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--token ""`` (or an empty PARITY_TOKEN) is no token given: the stored session is used,
    and with none the command says how to sign in (not a 401 from an empty bearer token)."""
    monkeypatch.setenv("PARITY_HOME", str(tmp_path))
    for env in ({"PARITY_TOKEN": ""}, {}):
        argv = [*args, "--server", "http://x.test"] + ([] if env else ["--token", ""])
        result = CliRunner().invoke(cli_app, argv, env=env)
        assert result.exit_code == 1, result.output
        assert "no session" in result.output and "parity-server auth --server http://x.test" in (
            result.output
        )


def test_options_are_read_before_the_command_only() -> None:
    """After the first word of the command, everything is the command's (no -- needed)."""
    result = _offline_cli("create", "--env", "A", "ls", "-la")
    assert result.exit_code == 2 and "--env 'A'" in result.stderr
    result = _offline_cli("create", "ls", "--env", "A")  # --env is ls's, and no server answers
    assert result.exit_code == 1 and "cannot reach" in result.stderr


# Follow streams a live server does not cut on demand, from a scripted stand-in.

TASK = "5f0c1c2e-0000-4000-8000-0000000000aa"


def _sse(*events: tuple[str, dict[str, Any], int | None]) -> bytes:
    out = []
    for name, data, event_id in events:
        head = f"id: {event_id}\n" if event_id is not None else ""
        out.append(f"{head}event: {name}\ndata: {json.dumps(data)}\n\n")
    return "".join(out).encode()


def _chunk(seq: int, *lines: str, attempt: int = 1) -> tuple[str, dict[str, Any], int]:
    return ("log", {"attempt": attempt, "seq": seq, "lines": list(lines)}, attempt * 10**8 + seq)


def _end(reason: str, status: str | None, after: int) -> tuple[str, dict[str, Any], None]:
    return ("end", {"status": status, "reason": reason, "next_after": after}, None)


def test_follow_reopens_the_stream_after_its_limit_a_shutdown_and_a_break(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(task_cli, "RETRY_PAUSE_S", 0.0)
    first, second = 10**8, 10**8 + 1
    answers = iter(
        [
            httpx.Response(200, content=_sse(_chunk(0, "one"), _end("timeout", "running", first))),
            httpx.Response(200, content=_sse(_end("shutdown", "running", first))),
            httpx.Response(503, json={"error": {"code": "unavailable", "message": "starting"}}),
            httpx.Response(200, content=_sse(_chunk(1, "two"))),  # cut before its end event
            httpx.Response(
                200,
                content=_sse(
                    _chunk(0, "retried", attempt=2), _end("task_ended", "completed", 2 * 10**8)
                ),
            ),
        ]
    )
    afters: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"{V1}/tasks/{TASK}/logs"
        assert request.url.params["follow"] == "true"
        afters.append(request.url.params.get("after"))
        return next(answers)

    answer_from(monkeypatch, handle)
    result = _offline_cli("logs", TASK, "--follow", url="http://tasks.test")
    assert result.exit_code == 0, result.output
    assert result.stdout == "one\ntwo\nretried\n"
    assert "--- attempt 2 ---" in result.stderr
    assert f"task {TASK} completed" in result.stderr
    assert afters == [None, str(first), str(first), str(first), str(second)]


def test_follow_gives_up_after_repeated_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_cli, "RETRY_PAUSE_S", 0.0)
    calls: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(200, content=_sse(_chunk(0, "one")))
        raise httpx.ConnectError("connection refused")

    answer_from(monkeypatch, handle)
    result = _offline_cli("logs", TASK, "--follow", url="http://tasks.test")
    assert result.exit_code == 1
    assert result.stdout == "one\n"
    assert "cannot reach http://tasks.test" in _one_error_line(result)
    assert len(calls) == task_cli.MAX_STREAM_ERRORS
