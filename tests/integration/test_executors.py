"""Executors of the reference runner: the command sandbox and the docker port (fake engine)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from parity.agent.executors import CancelToken
from parity.agent.executors.command import (
    MAX_LOG_LINE,
    CommandExecutor,
    Limits,
    LineSplitter,
    SandboxMode,
    detect_sandbox,
)
from parity.agent.executors.docker import DockerExecutor, FakeDockerEngine
from tests.conftest import until

MODES = [SandboxMode.UID] if os.geteuid() == 0 else []
if shutil.which("bwrap") and detect_sandbox(False) == SandboxMode.BWRAP:
    MODES.insert(0, SandboxMode.BWRAP)


async def _run(ex: CommandExecutor, config: dict, **task: object):
    lines: list[str] = []

    async def sink(chunk: list[str]) -> None:
        lines.extend(chunk)

    out = await ex.run({"config": config, **task}, sink, CancelToken())
    return out, lines


def test_a_sandbox_is_available_here():
    if not MODES:
        pytest.skip("neither bwrap nor root: command tasks are refused here (tested below)")
    assert detect_sandbox(False) in (SandboxMode.BWRAP, SandboxMode.UID)


@pytest.mark.parametrize("mode", MODES)
async def test_command_runs_and_streams_output(mode: SandboxMode):
    out, lines = await _run(CommandExecutor(mode), {"command": ["sh", "-c", "echo one; echo two"]})
    assert out.ok and out.exit_code == 0
    assert out.output == "one\ntwo\n"
    assert lines == ["one", "two"]


@pytest.mark.parametrize("mode", MODES)
async def test_sandboxed_command_cannot_read_a_private_file(mode: SandboxMode, tmp_path: Path):
    secret = tmp_path / "keystore.json"
    secret.write_text('{"crypto": "secret-material"}')
    secret.chmod(stat.S_IRUSR | stat.S_IWUSR)
    out, lines = await _run(CommandExecutor(mode), {"command": ["cat", str(secret)]})
    assert not out.ok
    assert "secret-material" not in out.output and "secret-material" not in "\n".join(lines)


@pytest.mark.parametrize("mode", MODES)
async def test_child_gets_a_clean_environment(mode: SandboxMode, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PARITY_KEYSTORE_PASSWORD", "hunter2")
    monkeypatch.setenv("SOME_RUNNER_SETTING", "x")
    out, _ = await _run(CommandExecutor(mode), {"command": ["env"], "env": {"TASK_VAR": "yes"}})
    assert out.ok
    assert "hunter2" not in out.output and "SOME_RUNNER_SETTING" not in out.output
    assert "TASK_VAR=yes" in out.output


@pytest.mark.parametrize("mode", MODES)
async def test_nonzero_exit_is_a_failure(mode: SandboxMode):
    out, _ = await _run(CommandExecutor(mode), {"command": ["sh", "-c", "exit 7"]})
    assert not out.ok and out.exit_code == 7 and out.error == "exit code 7"


@pytest.mark.parametrize("mode", MODES)
async def test_timeout_kills_the_process(mode: SandboxMode):
    out, _ = await _run(CommandExecutor(mode), {"command": ["sleep", "30"], "timeout_seconds": 1})
    assert not out.ok and "timed out after 1 s" in (out.error or "")


@pytest.mark.parametrize("mode", MODES)
async def test_cancel_stops_the_process(mode: SandboxMode):
    import asyncio

    cancel = CancelToken()
    lines: list[str] = []

    async def sink(chunk: list[str]) -> None:
        lines.extend(chunk)

    # 200 lines fill one log batch, so the sink hears from the process while it runs.
    command = ["sh", "-c", "seq 200; exec sleep 30"]
    job = asyncio.create_task(
        CommandExecutor(mode).run({"config": {"command": command}}, sink, cancel)
    )
    await until(lambda: lines)
    cancel.cancel("client asked")
    out = await asyncio.wait_for(job, 10)
    assert out.cancelled and "client asked" in (out.error or "")


@pytest.mark.parametrize("mode", MODES)
async def test_a_line_followed_by_silence_reaches_the_logs_while_the_command_runs(
    mode: SandboxMode,
):
    """`task logs --follow` shows a line as the runner sends it: one line and then a long
    quiet stretch (a long computation) is not held back until more output or the end."""
    cancel = CancelToken()
    lines: list[str] = []

    async def sink(chunk: list[str]) -> None:
        lines.extend(chunk)

    command = ["sh", "-c", "echo starting; exec sleep 30"]
    job = asyncio.create_task(
        CommandExecutor(mode).run({"config": {"command": command}}, sink, cancel)
    )
    try:
        await until(lambda: lines)
        assert lines == ["starting"]
    finally:
        cancel.cancel("test over")
        await asyncio.wait_for(job, 10)


@pytest.mark.parametrize("mode", MODES)
async def test_output_is_capped(mode: SandboxMode):
    ex = CommandExecutor(mode, Limits(output_bytes=1024, max_output_bytes=4096))
    out, _ = await _run(ex, {"command": ["sh", "-c", "yes abcdefgh | head -c 100000"]})
    assert out.ok
    # The inline text and its marker fit the inline limit (the server would cut a longer one).
    assert len(out.output.encode()) <= 1024
    assert out.full_output is not None
    stored = len(out.full_output)  # what the content store gets (itself capped at 4096 + marker)
    assert out.output.endswith(f"\n[output truncated: {stored} bytes, the first ones inline]")
    assert out.full_output is not None
    assert out.full_output.startswith(b"abcdefgh\nabcdefgh\n")
    assert out.full_output.endswith(b"[output truncated at 4096 bytes]")


@pytest.mark.parametrize("mode", MODES)
async def test_a_line_longer_than_any_read_buffer_is_output_not_a_crash(mode: SandboxMode):
    # 200,000 bytes on one line (asyncio's line reader stops at 64 KiB), then a short line
    # without a newline at the end.
    command = "head -c 200000 /dev/zero | tr '\\0' x; echo; printf tail"
    out, lines = await _run(CommandExecutor(mode), {"command": ["sh", "-c", command]})
    assert out.ok, out.error
    assert out.full_output == b"x" * 200000 + b"\ntail"
    assert "".join(lines[:-1]) == "x" * 200000 and lines[-1] == "tail"
    assert all(len(line) <= MAX_LOG_LINE for line in lines)


def test_log_lines_are_cut_at_character_boundaries():
    split = LineSplitter(max_line=4)
    # "é" is two bytes: a cut at 4 bytes would fall inside the second one.
    assert split.feed("aéé".encode()) == ["aé"]
    assert split.feed(b"\nlast") == ["é"]
    assert split.end() == ["last"]
    assert split.feed(b"abcd\nef\n\n") == ["abcd", "ef", ""]
    assert split.end() == []


@pytest.mark.parametrize("mode", MODES)
async def test_small_output_has_no_separate_copy(mode: SandboxMode):
    out, _ = await _run(CommandExecutor(mode), {"command": ["echo", "small"]})
    assert out.ok and out.output == "small\n" and out.full_output is None


@pytest.mark.skipif(SandboxMode.BWRAP not in MODES, reason="bubblewrap not usable here")
async def test_bwrap_sandbox_has_no_network_by_default():
    script = "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '"
    out, _ = await _run(CommandExecutor(SandboxMode.BWRAP), {"command": ["sh", "-c", script]})
    assert out.ok and out.output.split() == ["lo"]


async def test_without_sandbox_commands_are_refused():
    out, _ = await _run(CommandExecutor(SandboxMode.REFUSE), {"command": ["true"]})
    assert not out.ok and "refused" in (out.error or "")


async def test_missing_program_is_a_failure_with_a_reason():
    out, _ = await _run(CommandExecutor(SandboxMode.NONE), {"command": ["/no/such/program"]})
    assert not out.ok and out.exit_code == 127


async def test_docker_executor_runs_through_the_engine_port():
    engine = FakeDockerEngine(output="built\n")
    ex = DockerExecutor(engine)
    lines: list[str] = []

    async def sink(chunk: list[str]) -> None:
        lines.extend(chunk)

    task = {
        "config": {"image": "alpine:3", "command": ["echo", "built"], "env": {"A": "1"}},
        "resources": {"memory_mb": 256, "cpu_cores": 1},
    }
    out = await ex.run(task, sink, CancelToken())
    assert out.ok and out.output == "built\n" and lines == ["built"]
    spec = engine.runs[0]
    assert spec.image == "alpine:3" and spec.network is False and spec.memory_mb == 256
    assert "alpine:3" in engine.images


async def test_docker_nonzero_exit_is_a_failure():
    ex = DockerExecutor(FakeDockerEngine(exit_code=2))

    async def sink(_: list[str]) -> None:
        return None

    out = await ex.run({"config": {"image": "alpine:3"}}, sink, CancelToken())
    assert not out.ok and out.exit_code == 2


async def test_real_docker_engine_is_reported_absent_here():
    from parity.agent.executors.docker import HttpDockerEngine

    engine = HttpDockerEngine("/var/run/docker.sock")
    if await engine.ping():
        pytest.skip(
            "a Docker engine answers here; the real-engine path is not covered by this test"
        )
    print("no Docker engine on this machine: the runner does not advertise docker")
    assert not await engine.ping()


async def test_docker_image_cid_is_loaded_from_the_content_store():
    engine = FakeDockerEngine(output="from a loaded image\n")
    tar = b"pretend image tar" * 100
    fetched: list[str] = []

    async def fetch(cid: str):
        fetched.append(cid)
        for i in range(0, len(tar), 256):
            yield tar[i : i + 256]

    async def sink(_: list[str]) -> None:
        return None

    ex = DockerExecutor(engine, fetch=fetch)
    out = await ex.run({"config": {"image_cid": "bafy-test"}}, sink, CancelToken())
    assert out.ok and out.output == "from a loaded image\n"
    assert fetched == ["bafy-test"] and engine.loaded == [tar]
    assert engine.runs[0].image.startswith("loaded-")


async def test_docker_image_cid_without_a_store_is_a_clear_failure():
    async def sink(_: list[str]) -> None:
        return None

    out = await DockerExecutor(FakeDockerEngine()).run(
        {"config": {"image_cid": "bafy-test"}}, sink, CancelToken()
    )
    assert not out.ok and "content store" in (out.error or "")


async def test_engine_adapter_reads_the_loaded_image_name(monkeypatch: pytest.MonkeyPatch):
    import httpx

    from parity.agent.executors.docker import HttpDockerEngine

    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1.41/images/load"
        seen.append(request.read())
        return httpx.Response(200, text='{"stream":"Loaded image: job:v1\\n"}\n')

    engine = HttpDockerEngine()

    def client(timeout: float | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.MockTransport(handler), base_url="http://docker/v1.41"
        )

    monkeypatch.setattr(engine, "_client", client)

    async def tar():
        yield b"abc"
        yield b"def"

    assert await engine.load_image(tar()) == "job:v1"
    assert seen == [b"abcdef"]


# -- a task's processes end with the task, and with the runner ------------------------------

# The modes whose processes the runner's own namespace sees (bwrap's have their own PIDs and
# end with the sandbox: --die-with-parent).
HOST_PID_MODES = [SandboxMode.NONE, *(m for m in MODES if m == SandboxMode.UID)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


@pytest.mark.parametrize("mode", HOST_PID_MODES)
async def test_a_process_a_command_leaves_behind_ends_with_the_task(mode: SandboxMode):
    # The background sleep holds the output pipe open: without ending it the task would wait
    # for it (30 s) after its command exited.
    started = asyncio.get_running_loop().time()
    out, lines = await _run(
        CommandExecutor(mode), {"command": ["sh", "-c", "sleep 30 & echo $!"]}, timeout_seconds=60
    )
    assert out.ok and asyncio.get_running_loop().time() - started < 10
    await until(lambda: not _alive(int(lines[0])), timeout=5)


RUNNER_STAND_IN = """
import asyncio, sys
from parity.agent.executors import CancelToken
from parity.agent.executors.command import CommandExecutor, SandboxMode

async def sink(lines):
    pass

asyncio.run(CommandExecutor(SandboxMode(sys.argv[1])).run(
    {"config": {"command": ["sh", "-c", sys.argv[2]]}}, sink, CancelToken()))
"""


@pytest.mark.parametrize("mode", HOST_PID_MODES)
async def test_a_runner_killed_outright_takes_its_tasks_processes_and_files_with_it(
    mode: SandboxMode,
):
    # A directory the dedicated uid can reach and write (pytest's tmp_path is under a 0700 one).
    shared = Path(tempfile.mkdtemp(prefix="parity-reaper-"))
    shared.chmod(0o777)
    pids = shared / "pids"
    script = f"sleep 60 & echo $$ $! $PWD > {pids}.tmp; mv {pids}.tmp {pids}; sleep 60"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER_STAND_IN, mode.value, script])
    try:
        await until(pids.exists, timeout=20)
        first, second, where = pids.read_text().split()
        shell, background, workdir = int(first), int(second), Path(where)
        assert _alive(shell) and _alive(background)
        assert workdir.name.startswith("parity-task-") and workdir.is_dir()
        # The runner lists the group with its watchdog right after the spawn returns; the
        # shell may write its pids before that: a runner killed in that instant is not covered.
        await asyncio.sleep(0.5)
        runner.kill()  # SIGKILL: the runner runs no code of its own after this
        runner.wait(timeout=10)
        await until(lambda: not _alive(shell) and not _alive(background), timeout=10)
        # And what the task wrote goes with them: its work directory is removed.
        await until(lambda: not workdir.exists(), timeout=10)
    finally:
        runner.kill()
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("mode", HOST_PID_MODES)
async def test_nul_bytes_in_output_become_replacement_characters(mode: SandboxMode):
    # No text column of the server holds U+0000; the runner's report of such output would be
    # refused and the result lost.
    out, lines = await _run(CommandExecutor(mode), {"command": ["printf", "a\\000b\\nc"]})
    assert out.ok and out.output == "a\ufffdb\nc"
    assert lines == ["a\ufffdb", "c"]


# -- the dedicated-uid mode: one uid per task, its own network ------------------------------

UID_ONLY = [m for m in MODES if m == SandboxMode.UID]


@pytest.mark.parametrize("mode", UID_ONLY)
async def test_two_tasks_on_one_machine_cannot_read_each_others_secrets(mode: SandboxMode):
    # They ran under one shared uid (65534) with world-writable work directories: a task could
    # read another's environment in /proc and its files.
    shared = Path(tempfile.mkdtemp(prefix="parity-uid-"))
    shared.chmod(0o777)
    ready = shared / "first"
    first = asyncio.create_task(
        _run(
            CommandExecutor(mode),
            {
                "command": [
                    "sh",
                    "-c",
                    f"echo private > secret.txt; echo $PWD > {ready}.tmp; mv {ready}.tmp {ready};"
                    " sleep 5",
                ],
                "env": {"A_API_TOKEN": "tok-of-a"},
            },
        )
    )
    try:
        await until(ready.exists, timeout=20)
        spy = (
            "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c tok-of-a;"
            f" cat $(cat {ready})/secret.txt 2>&1; ls $(cat {ready}) 2>&1; true"
        )
        out, _ = await _run(CommandExecutor(mode), {"command": ["sh", "-c", spy]})
        assert out.ok, out
        assert out.output.splitlines()[0] == "0"  # no environment of the other task read
        assert "private" not in out.output and "Permission denied" in out.output
    finally:
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("mode", UID_ONLY)
async def test_a_task_has_no_network_unless_it_asks(mode: SandboxMode):
    executor = CommandExecutor(mode)
    if not executor.network_isolation:
        pytest.skip("this kernel or container refuses network namespaces")
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    probe = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
        "    print('reached')\n"
        "except OSError as e:\n"
        "    print('unreachable', e)\n"
    )
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the task to probe with")
    command = [python, "-S", "-c", probe]
    async with listener:
        closed, _ = await _run(executor, {"command": command})
        opened, _ = await _run(executor, {"command": command, "network": True})
    assert closed.output.startswith("unreachable"), closed
    assert opened.output.startswith("reached"), opened
