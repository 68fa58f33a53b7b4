"""The `command` executor, sandboxed.

Order of preference: bubblewrap (`bwrap`) — a fresh mount namespace with read-only system
directories, an empty home and /tmp, no network unless the task asks for it, uid 65534; else,
when running as root, a dedicated unprivileged uid (65534) via setuid; else refuse unless the
runner was started with --allow-unsandboxed-commands. The child never inherits the runner's
environment (tokens, PARITY_KEYSTORE_PASSWORD): it gets a minimal one plus the task's ``env``.
Limits: wall-clock timeout, CPU time and address space (setrlimit), captured output capped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from parity.agent.executors import CancelToken, LogSink, Outcome
from parity.agent.executors.reaper import REAPER

UNPRIVILEGED_UID = 65534
READ_CHUNK = 64 * 1024
MAX_LOG_LINE = 64 * 1024  # bytes of one log line; a longer output line is cut into several
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


class SandboxMode(StrEnum):
    BWRAP = "bwrap"
    UID = "uid"
    NONE = "none"
    REFUSE = "refuse"


def detect_sandbox(allow_unsandboxed: bool, prefer: str | None = None) -> SandboxMode:
    """bwrap when it works here, else a dedicated uid as root, else none/refuse."""
    if prefer:
        return SandboxMode(prefer)
    if shutil.which("bwrap") and _bwrap_works():
        return SandboxMode.BWRAP
    if os.geteuid() == 0:
        return SandboxMode.UID
    return SandboxMode.NONE if allow_unsandboxed else SandboxMode.REFUSE


def _bwrap_works() -> bool:
    import subprocess

    try:
        res = subprocess.run(
            [*_bwrap_prefix(tempfile.gettempdir(), network=False), "true"],
            capture_output=True,
            timeout=10,
            env=BASE_ENV,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _bwrap_prefix(workdir: str, network: bool) -> list[str]:
    args = [
        "bwrap",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/sbin", "/sbin",
        "--ro-bind", "/etc", "/etc",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",  # noqa: S108 - a fresh tmpfs inside the sandbox
        "--bind", workdir, "/work",
        "--chdir", "/work",
        "--unshare-all",
        "--unshare-user",
        "--uid", str(UNPRIVILEGED_UID),
        "--gid", str(UNPRIVILEGED_UID),
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]  # fmt: skip
    if os.path.exists("/usr/lib64"):
        args[7:7] = ["--symlink", "usr/lib64", "/lib64"]
    if network:
        args.append("--share-net")
    return args


@dataclass
class Limits:
    timeout_seconds: float = 3600.0
    memory_mb: int = 2048
    output_bytes: int = 64 * 1024  # kept inline in the result
    max_output_bytes: int = 16 * 1024 * 1024  # kept at all (stored under a CID when large)


def _preexec(limits: Limits, as_uid: int | None) -> Callable[[], None]:
    cpu = int(limits.timeout_seconds) + 5
    mem = limits.memory_mb * 1024 * 1024

    def apply() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if as_uid is not None:
            os.setgroups([])
            os.setgid(as_uid)
            os.setuid(as_uid)

    return apply


class CommandExecutor:
    def __init__(self, mode: SandboxMode, default_limits: Limits | None = None) -> None:
        self.mode = mode
        self.limits = default_limits or Limits()

    @property
    def available(self) -> bool:
        return self.mode != SandboxMode.REFUSE

    async def run(self, task: dict[str, Any], logs: LogSink, cancel: CancelToken) -> Outcome:
        if self.mode == SandboxMode.REFUSE:
            return Outcome(
                False,
                None,
                "",
                "command tasks are refused: no sandbox (install bubblewrap, run as root for a "
                "dedicated uid, or start with --allow-unsandboxed-commands)",
            )
        config = task.get("config") or {}
        argv = [str(a) for a in config.get("command") or []]
        if not argv:
            return Outcome(False, None, "", "config.command is empty")
        limits = Limits(
            timeout_seconds=float(
                config.get("timeout_seconds")
                or task.get("timeout_seconds")
                or self.limits.timeout_seconds
            ),
            memory_mb=int((task.get("resources") or {}).get("memory_mb") or self.limits.memory_mb),
            output_bytes=self.limits.output_bytes,
            max_output_bytes=self.limits.max_output_bytes,
        )
        env = {**BASE_ENV, **{str(k): str(v) for k, v in (config.get("env") or {}).items()}}
        with tempfile.TemporaryDirectory(prefix="parity-task-") as workdir:
            os.chmod(workdir, 0o777)  # noqa: S103 - the unprivileged uid writes here
            env["HOME"] = "/work" if self.mode == SandboxMode.BWRAP else workdir
            sandbox_tmp = "/tmp"  # noqa: S108 - the tmpfs inside the sandbox
            env["TMPDIR"] = sandbox_tmp if self.mode == SandboxMode.BWRAP else workdir
            if self.mode == SandboxMode.BWRAP:
                full = [*_bwrap_prefix(workdir, bool(config.get("network")))]
                for k, v in env.items():
                    full += ["--setenv", k, v]
                full += ["--", *argv]
                as_uid = None
            else:
                full = argv
                as_uid = UNPRIVILEGED_UID if self.mode == SandboxMode.UID else None
            return await self._spawn(full, env, workdir, limits, as_uid, logs, cancel)

    async def _spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        limits: Limits,
        as_uid: int | None,
        logs: LogSink,
        cancel: CancelToken,
    ) -> Outcome:
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                preexec_fn=_preexec(limits, as_uid),
            )
        except (FileNotFoundError, PermissionError) as exc:
            return Outcome(False, 127, "", f"cannot start {argv[0]!r}: {exc}")
        # bwrap ends its sandbox with the runner (--die-with-parent); otherwise the watchdog
        # kills the task's process group if the runner dies first.
        watched = self.mode != SandboxMode.BWRAP
        if watched:
            REAPER.track(proc.pid)
        try:
            return await self._supervise(proc, limits, logs, cancel, started)
        finally:
            # The task is over: whatever it left running in its group (a background job
            # holding its output open) ends with it.
            _kill_group(proc.pid)
            if watched:
                REAPER.untrack(proc.pid)

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process,
        limits: Limits,
        logs: LogSink,
        cancel: CancelToken,
        started: float,
    ) -> Outcome:
        captured = bytearray()
        truncated = False
        assert proc.stdout is not None

        async def pump() -> None:
            nonlocal truncated
            assert proc.stdout is not None
            pending: list[str] = []
            last = time.monotonic()
            split = LineSplitter()
            # Read in chunks, not lines: a line may be longer than any reader buffer (a
            # 70 KB JSON document on one line must not fail the task).
            while chunk := await proc.stdout.read(READ_CHUNK):
                if len(captured) < limits.max_output_bytes:
                    captured.extend(chunk[: limits.max_output_bytes - len(captured)])
                else:
                    truncated = True
                pending.extend(split.feed(chunk))
                if len(pending) >= 200 or time.monotonic() - last > 0.5:
                    await logs(pending)
                    pending, last = [], time.monotonic()
            pending.extend(split.end())
            if pending:
                await logs(pending)

        pump_task = asyncio.create_task(pump())
        exit_task = asyncio.create_task(_exited(proc))
        cancel_task = asyncio.create_task(cancel.wait())
        done, _ = await asyncio.wait(
            {exit_task, cancel_task}, timeout=limits.timeout_seconds, return_when="FIRST_COMPLETED"
        )
        reason = None
        if exit_task not in done:
            reason = (
                "cancelled: " + cancel.reason
                if cancel.cancelled
                else (f"timed out after {limits.timeout_seconds:g} s")
            )
        # The command has exited (or is being stopped): a process it left in its group may
        # still hold the output pipe open, and the task must not wait for it.
        _kill_group(proc.pid)
        await proc.wait()
        for waiter in (exit_task, cancel_task):
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        await pump_task
        code = proc.returncode
        full: bytes | None = None
        if truncated:
            captured.extend(f"\n[output truncated at {limits.max_output_bytes} bytes]".encode())
        if len(captured) > limits.output_bytes:
            full = bytes(captured)
            # The marker fits within the inline limit too: the server keeps that many bytes
            # inline, and would cut a longer text (and this marker with it).
            marker = f"\n[output truncated: {len(full)} bytes, the first ones inline]"
            keep = _char_boundary(captured, max(limits.output_bytes - len(marker), 0))
            output = _text(captured[:keep], errors="ignore") + marker
        else:
            output = _text(captured)
        usage = {"wall_seconds": round(time.monotonic() - started, 3)}
        if reason is not None:
            return Outcome(False, code, output, reason, usage, cancelled=cancel.cancelled)
        if code != 0:
            why = f"exit code {code}"
            if code is not None and code < 0:
                why = f"killed by signal {-code}"
            return Outcome(False, code, output, why, usage)
        return Outcome(True, 0, output, None, usage, full_output=full)


class LineSplitter:
    """Bytes of a process's output → its log lines, newline-free. A line longer than
    ``MAX_LOG_LINE`` bytes becomes several log lines, cut at UTF-8 character boundaries."""

    def __init__(self, max_line: int | None = None) -> None:
        self.max_line = max_line or MAX_LOG_LINE
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer.extend(chunk)
        lines: list[str] = []
        while True:
            end = self._buffer.find(b"\n", 0, self.max_line + 1)
            if end >= 0:
                lines.append(self._take(end, skip=1))
            elif len(self._buffer) > self.max_line:
                lines.append(self._take(_char_boundary(self._buffer, self.max_line), skip=0))
            else:
                return lines

    def end(self) -> list[str]:
        """The last line, when the output did not end with a newline."""
        return [self._take(len(self._buffer), skip=0)] if self._buffer else []

    def _take(self, end: int, skip: int) -> str:
        piece = bytes(self._buffer[:end])
        del self._buffer[: end + skip]
        return _text(piece)


def _text(data: bytes | bytearray, errors: str = "replace") -> str:
    """Output bytes as the text a result or log line carries: invalid UTF-8 and NUL bytes
    (which no text column of the server holds) become U+FFFD. The whole output, NUL bytes
    included, is kept byte for byte under ``output_cid`` when it is large."""
    return data.decode(errors=errors).replace("\x00", "\ufffd")


def _char_boundary(data: bytearray, at: int) -> int:
    """``at``, moved back off UTF-8 continuation bytes (never to 0)."""
    cut = at
    while cut > at - 3 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Returns when ``proc`` has exited. ``proc.wait()`` also waits for its output pipe to
    close, which a process it left behind may hold open; a pidfd says when the process itself
    is gone (without reaping it). Without pidfds (Linux before 5.3), ``proc.wait()``."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return  # exited and reaped already
    except (AttributeError, OSError):
        await proc.wait()
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
