"""What `parity-server fl` prints, and how it prepares a session's configuration: pure functions
over the server's JSON documents (the shapes of the federated-learning API), no I/O."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from parity.cli.tables import table

TERMINAL = frozenset({"completed", "failed", "cancelled"})

# The file formats a session's dataset may have, by file name extension.
DATA_FORMATS = {".csv": "csv", ".npz": "npz", ".json": "json"}


class ConfigProblem(Exception):
    """A session configuration the command cannot send as asked; the message says why."""


class _Constant(str):
    """``NaN``, ``Infinity`` or ``-Infinity`` as Python's JSON reader lets a file have them."""


def parse_config(text: str, name: str) -> dict[str, Any]:
    """The session configuration a file holds: a JSON object, without NaN or Infinity (which
    JSON has not and the server refuses: said here naming the field, not a traceback when the
    body cannot be written)."""
    try:
        doc = json.loads(text, parse_constant=_Constant)
    except ValueError as exc:
        raise ConfigProblem(f"{name} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigProblem(f"{name} must hold a JSON object (the session's configuration)")
    found = _first_constant(doc, "")
    if found is not None:
        field, constant = found
        raise ConfigProblem(
            f"{name}: {field} is {constant}, which is not a JSON number "
            "(NaN and Infinity are refused anywhere in the configuration)"
        )
    return doc


def _first_constant(doc: Any, path: str) -> tuple[str, str] | None:
    """The dotted path and text of the first NaN or Infinity in ``doc``, else None."""
    if isinstance(doc, _Constant):
        return path, str(doc)
    items: Any = ()
    if isinstance(doc, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in doc.items())
    elif isinstance(doc, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(doc))
    for where, value in items:
        found = _first_constant(value, where)
        if found is not None:
            return found
    return None


def data_format_for(path: Path) -> str | None:
    """``data.csv`` -> ``"csv"``; None for an extension the server does not read."""
    return DATA_FORMATS.get(path.suffix.lower())


def with_dataset(config: Mapping[str, Any], cid: str, data_format: str | None) -> dict[str, Any]:
    """A copy of ``config`` whose ``training_data`` names the uploaded dataset ``cid``;
    ``data_format`` fills ``training_data.data_format`` only where the config leaves it out."""
    out = dict(config)
    training = dict(out.get("training_data") or {})
    training["dataset_cid"] = cid
    if training.get("data_format") is None and data_format is not None:
        training["data_format"] = data_format
    out["training_data"] = training
    return out


def check_dataset_option(config: Mapping[str, Any], dataset: Path) -> None:
    """Refuse ``--dataset`` where the config already names its data (one source only) or where
    the data format can be told neither from the config nor from the file name."""
    training = config.get("training_data")
    if training is not None and not isinstance(training, Mapping):
        raise ConfigProblem("training_data must be an object")
    training = training or {}
    for key in ("dataset_cid", "runner_dataset"):
        if training.get(key) is not None:
            raise ConfigProblem(
                f"the configuration names training_data.{key} already; "
                "remove it or leave out --dataset"
            )
    if training.get("data_format") is None and data_format_for(dataset) is None:
        known = ", ".join(sorted(DATA_FORMATS))
        raise ConfigProblem(
            f"cannot tell the format of {dataset.name} from its extension (known: {known}); "
            "set training_data.data_format in the configuration"
        )


def number(value: Any, digits: int = 4) -> str:
    """A metric for a table cell: ``-`` when absent, integers as they are, floats rounded."""
    if value is None or isinstance(value, bool):
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def millis(value: Any) -> str:
    """``1234`` (ms) -> ``"1.23s"``; ``-`` when absent."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value / 1000:.2f}s" if value >= 1000 else f"{value:.0f}ms"


def sessions_table(sessions: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [("ID", "NAME", "STATUS", "ROUND", "PARTICIPANTS", "CREATED")]
    for s in sessions:
        rows.append(
            (
                str(s.get("id")),
                str(s.get("name")),
                str(s.get("status")),
                f"{s.get('current_round', 0)}/{s.get('total_rounds')}",
                f"{s.get('participant_count', 0)}/{s.get('min_participants')}",
                str(s.get("created_at") or "-"),
            )
        )
    return table(rows)


def metrics_table(rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per completed round: participants, examples, train loss and accuracy (weighted
    by examples), test accuracy when the session holds out a test split, duration and the
    coordination overhead."""
    rows = [
        (
            "ROUND",
            "PARTICIPANTS",
            "EXAMPLES",
            "TRAIN_LOSS",
            "TRAIN_ACC",
            "TEST_LOSS",
            "TEST_ACC",
            "DURATION",
            "OVERHEAD",
        )
    ]
    for m in rounds:
        rows.append(
            (
                str(m.get("round")),
                number(m.get("participants")),
                number(m.get("examples")),
                number(m.get("train_loss_weighted")),
                number(m.get("train_accuracy_weighted")),
                number(m.get("test_loss")),
                number(m.get("test_accuracy")),
                millis(m.get("duration_ms")),
                millis(m.get("coordination_overhead_ms")),
            )
        )
    return table(rows)


def session_lines(session: Mapping[str, Any]) -> list[str]:
    """The session's identity, state and global model, one fact a line."""
    lines = [
        f"session       {session.get('id')}  {session.get('name')}",
        f"status        {session.get('status')}"
        + (f" ({session['failure_reason']})" if session.get("failure_reason") else ""),
        f"round         {session.get('current_round', 0)}/{session.get('total_rounds')}",
        f"participants  {session.get('participant_count', 0)} "
        f"(min {session.get('min_participants')}, max {session.get('max_participants')})",
        f"model         {session.get('model_type')}",
    ]
    config = session.get("config") or {}
    if isinstance(config, Mapping) and config.get("aggregation_method"):
        lines.append(f"aggregation   {config['aggregation_method']}")
    model = session.get("global_model")
    if isinstance(model, Mapping):
        lines.append(f"global model  round {model.get('round')}  {model.get('cid')}")
    for key in ("created_at", "started_at"):
        if session.get(key):
            lines.append(f"{key.removesuffix('_at'):<13} {session[key]}")
    if session.get("completed_at"):
        # The API's completed_at is when the session ended, whichever way: named by its status.
        status = session.get("status")
        ended = status if status in TERMINAL else "ended"
        lines.append(f"{ended:<13} {session['completed_at']}")
    return lines


def _count(value: Any) -> int:
    """A count the API gives as a number or as the list of what it counts."""
    if isinstance(value, (list, tuple)):
        return len(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def round_line(rnd: Mapping[str, Any]) -> str:
    """The latest round: its state, the updates in against those it needs, its deadline."""
    text = (
        f"latest round  {rnd.get('number')}: {rnd.get('status')}, "
        f"{rnd.get('updates_received', 0)}/{_count(rnd.get('participants'))} updates "
        f"(needs {rnd.get('required_updates')})"
    )
    if _count(rnd.get("dropped")):
        text += f", {_count(rnd['dropped'])} dropped"
    if rnd.get("closed_at"):
        text += f", closed {rnd['closed_at']}"
    elif rnd.get("deadline_at"):
        text += f", deadline {rnd['deadline_at']}"
    if rnd.get("failure_reason"):
        text += f" ({rnd['failure_reason']})"
    return text


def accuracy_text(m: Mapping[str, Any]) -> str:
    """Test accuracy where the session holds a test split, else the weighted train accuracy,
    then the weighted train loss."""
    if m.get("test_accuracy") is not None:
        acc = f"test acc {number(m['test_accuracy'])}"
    else:
        acc = f"train acc {number(m.get('train_accuracy_weighted'))}"
    return f"{acc}  train loss {number(m.get('train_loss_weighted'))}"


def round_summary(m: Mapping[str, Any], total_rounds: Any) -> str:
    """A completed round for `fl watch`, one line."""
    return (
        f"round {m.get('round')}/{total_rounds}  {accuracy_text(m)}  "
        f"participants {number(m.get('participants'))}  {millis(m.get('duration_ms'))}"
    )


def watch_description(session: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]]) -> str:
    """The progress bar's label: state and the latest round's accuracy."""
    head = f"{session.get('status')} {len(rounds)}/{session.get('total_rounds')}"
    return f"{head}  {accuracy_text(rounds[-1])}" if rounds else head


def pending_note(session: Mapping[str, Any]) -> str:
    """`fl watch` of a session nobody started yet (a `fl start` refused for want of runners):
    said once, so that the wait is not a silent one."""
    sid = session.get("id")
    return (
        f"session {sid} is pending: it has no rounds until it is started "
        f"(parity-server fl start {sid}); waiting"
    )
