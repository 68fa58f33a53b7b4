"""What `parity-server task` sends and prints: pure functions over the options it is given and
the server's JSON documents (the shapes of the compute-task API), no I/O."""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from parity.cli.tables import table

TERMINAL = frozenset({"completed", "failed", "cancelled"})
STATUSES = (
    "pending",
    "assigned",
    "running",
    "cancel_requested",
    "completed",
    "failed",
    "cancelled",
)
TITLE_MAX = 255  # the API's limit on a title


class TaskProblem(Exception):
    """Options the command cannot turn into a request; the message says which and why."""


def task_id(text: str) -> str:
    """A task id as the API spells it (a UUID), or :class:`TaskProblem`."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise TaskProblem(f"{text!r} is not a task id (a UUID)") from None


def pairs(option: str, items: Sequence[str]) -> dict[str, str]:
    """Repeated ``KEY=VALUE`` options as a mapping; a later KEY wins. The value may be empty
    and may hold ``=``; the key may not be empty."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TaskProblem(f"{option} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def command_argv(argv: Sequence[str], command_json: str | None) -> list[str] | None:
    """The command to run: the words after ``--``, or ``--command-json`` (a JSON array of
    strings); None when neither is given. Both at once is refused."""
    if command_json is None:
        return list(argv) or None
    if argv:
        raise TaskProblem("give the command after -- or as --command-json, not both")
    try:
        doc = json.loads(command_json)
    except ValueError as exc:
        raise TaskProblem(f"--command-json is not JSON: {exc}") from None
    if not isinstance(doc, list) or not all(isinstance(w, str) for w in doc):
        raise TaskProblem('--command-json must be a JSON array of strings, e.g. ["sh", "-c", "…"]')
    if not doc:
        raise TaskProblem("--command-json must not be an empty array")
    return doc


@dataclass(frozen=True)
class CreateOptions:
    """What `task create` was asked for, before it becomes the request body."""

    argv: list[str] | None
    title: str | None = None
    description: str | None = None
    image: str | None = None
    image_cid: str | None = None
    env: Mapping[str, str] | None = None
    labels: Mapping[str, str] | None = None
    timeout_seconds: int | None = None
    cpu_cores: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    network: bool = False
    max_attempts: int | None = None
    priority: int | None = None


def create_body(o: CreateOptions) -> dict[str, Any]:
    """The body of ``POST /tasks``: a ``command`` task, or a ``docker`` task when an image is
    named. A command task needs a command; a docker task without one runs the image's own."""
    if o.image is not None and o.image_cid is not None:
        raise TaskProblem("give --image or --image-cid, not both")
    docker = o.image is not None or o.image_cid is not None
    if not docker and o.argv is None:
        raise TaskProblem(
            "no command: give it after -- (task create -- CMD ARGS...) or as --command-json, "
            "or name a docker image with --image"
        )
    config: dict[str, Any] = {}
    if o.image is not None:
        config["image"] = o.image
    if o.image_cid is not None:
        config["image_cid"] = o.image_cid
    if o.argv is not None:
        config["command"] = list(o.argv)
    if o.env:
        config["env"] = dict(o.env)
    if o.network:
        config["network"] = True
    body: dict[str, Any] = {
        "title": o.title or default_title(o.argv, o.image or o.image_cid),
        "type": "docker" if docker else "command",
        "config": config,
    }
    if o.description is not None:
        body["description"] = o.description
    if o.labels:
        body["labels"] = dict(o.labels)
    resources = {
        k: v
        for k, v in (("cpu_cores", o.cpu_cores), ("memory_mb", o.memory_mb), ("gpus", o.gpus))
        if v is not None
    }
    if resources:
        body["resources"] = resources
    for key, value in (
        ("timeout_seconds", o.timeout_seconds),
        ("max_attempts", o.max_attempts),
        ("priority", o.priority),
    ):
        if value is not None:
            body[key] = value
    return body


def default_title(argv: Sequence[str] | None, image: str | None) -> str:
    """The command line (after the image of a docker task) as the title, cut to the API's 255
    characters."""
    text = " ".join(w for w in (image, shlex.join(argv) if argv else None) if w) or "task"
    return text if len(text) <= TITLE_MAX else text[: TITLE_MAX - 1] + "…"


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name, its data (the ``data:`` lines joined) and its id."""

    name: str
    data: str
    id: str | None


def server_events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of a ``text/event-stream`` read line by line (comments skipped)."""
    name, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Event(name, "\n".join(data), event_id)
            name, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield Event(name, "\n".join(data), event_id)


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def tasks_table(tasks: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [("ID", "STATUS", "TYPE", "ATTEMPTS", "CREATED", "TITLE")]
    for t in tasks:
        rows.append(
            (
                _text(t.get("id")),
                _text(t.get("status")),
                _text(t.get("type")),
                f"{t.get('attempts', 0)}/{t.get('max_attempts')}",
                _text(t.get("created_at")),
                _text(t.get("title")),
            )
        )
    return table(rows)


def page_note(offset: int, shown: int, total: int | None) -> str:
    """Where a page of ``task list`` sits in the whole list, and how to read the next one."""
    if shown == 0:
        return f"no tasks at offset {offset}" + (f" (of {total})" if total is not None else "")
    text = f"tasks {offset + 1}-{offset + shown}" + (f" of {total}" if total is not None else "")
    if total is not None and offset + shown < total:
        text += f"; next page: --offset {offset + shown}"
    return text


def command_text(task: Mapping[str, Any]) -> str:
    """What the task runs, as one line: the command line, and the image of a docker task."""
    config = task.get("config") or {}
    command = config.get("command_string")
    if command is None and isinstance(config.get("command"), list):
        command = shlex.join(str(w) for w in config["command"])
    image = config.get("image") or config.get("image_cid")
    if image:
        return f"{image} {command}" if command else f"{image} (its own command)"
    return command or "-"


def resources_text(resources: Mapping[str, Any]) -> str:
    parts = []
    if resources.get("cpu_cores"):
        parts.append(f"{resources['cpu_cores']} cpu cores")
    if resources.get("memory_mb"):
        parts.append(f"{resources['memory_mb']} MB memory")
    if resources.get("gpus"):
        parts.append(f"{resources['gpus']} gpus")
    if resources.get("docker"):
        parts.append("docker")
    return ", ".join(parts) or "any runner"


def reward_text(reward: Mapping[str, Any]) -> str:
    """The task's price from the ledger: what the client pays, the runner's reward and fee."""
    if reward.get("status") == "not_priced":
        return "not priced"
    text = (
        f"{_text(reward.get('price'))} base units "
        f"(reward {_text(reward.get('reward'))}, fee {_text(reward.get('fee'))}), "
        f"{reward.get('status')}"
    )
    return text + (" (paid on chain)" if reward.get("paid") else "")


def task_lines(task: Mapping[str, Any], reward: Mapping[str, Any] | None = None) -> list[str]:
    """A task's identity, state, runner, times and price, one fact a line."""
    status = _text(task.get("status"))
    if task.get("cancel_requested") and status != "cancelled":
        status += " (cancel requested)"
    attempts = f"{task.get('attempts', 0)} of {task.get('max_attempts')}"
    if task.get("releases"):
        attempts += f" ({task['releases']} given back untouched, not counted)"
    lines = [
        f"task       {task.get('id')}  {task.get('title')}",
        f"status     {status}",
        f"type       {task.get('type')}: {command_text(task)}",
        f"attempts   {attempts}",
        f"runner     {_text(task.get('runner_id'))}",
    ]
    if task.get("last_error"):
        lines.append(f"last error {task['last_error']}")
    if task.get("waiting_for"):
        lines.append(f"waiting    {task['waiting_for']}")
    lines.append(f"resources  {resources_text(task.get('resources') or {})}")
    labels = task.get("labels") or {}
    if labels:
        lines.append("labels     " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
    if task.get("timeout_seconds"):
        lines.append(f"timeout    {task['timeout_seconds']} s")
    for key in ("created_at", "started_at", "completed_at"):
        if task.get(key):
            lines.append(f"{key.removesuffix('_at'):<10} {task[key]}")
    if reward is not None:
        lines.append(f"price      {reward_text(reward)}")
    return lines


def attempts_table(attempts: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [("ATTEMPT", "RUNNER", "CLAIMED", "ENDED", "OUTCOME", "EXIT", "ERROR")]
    for a in attempts:
        error = _text(a.get("error")).splitlines()[0] if a.get("error") else "-"
        rows.append(
            (
                _text(a.get("attempt")),
                _text(a.get("runner_id")),
                _text(a.get("claimed_at")),
                _text(a.get("ended_at")),
                _text(a.get("outcome")),
                _text(a.get("exit_code")),
                error,
            )
        )
    return table(rows)


def process_exit_code(attempts: Sequence[Mapping[str, Any]]) -> int | None:
    """The exit code the last attempt's process reported, when it is one a shell can pass on
    (1-255); None otherwise (no process exit: a lease expired, a signal, an error)."""
    if not attempts:
        return None
    last = max(attempts, key=lambda a: a.get("attempt") or 0)
    code = last.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and 1 <= code <= 255:
        return code
    return None
