"""`parity-server fl create/start/status/watch/model/list/cancel`.

Against a real server process: create with an uploaded CSV dataset, list, status, a start
refused for want of runners, cancel; and a whole session, the test playing two runners over
HTTP, followed by `fl watch` to its end and its model downloaded with `fl model`. The cases a
live server does not produce on demand (a failed session, a restart during `fl watch`, a model
that changes or does not match during its download, many pages of sessions) run against a
scripted stand-in speaking the federated-learning API's shapes through an httpx MockTransport."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from parity.cli import fl as fl_cli
from parity.cli.main import app as cli_app
from parity.core.fl.tensors import decode, encode
from tests.conftest import ALICE
from tests.e2e.procs import ServerProcess
from tests.integration.cli_support import answer_from, cli_env, cli_for, register_runner
from tests.integration.cli_support import server_fixture as server_fixture  # the `server` fixture

API = "/api/v1/federated-learning"
SID = "5f0c1c2e-0000-4000-8000-000000000001"

# The original README's example request (dataset named by --dataset, not in the file).
CONFIG: dict[str, Any] = {
    "name": "Iris-like",
    "description": "three classes, four features",
    "model_type": "neural_network",
    "total_rounds": 3,
    "min_participants": 2,
    "creator_address": ALICE.address,
    "training_data": {
        "split_strategy": "non_iid",
        "seed": 7,
        "metadata": {"alpha": 0.5, "min_samples": 5},
    },
    "config": {
        "aggregation_method": "federated_averaging",
        "learning_rate": 0.1,
        "batch_size": 8,
        "local_epochs": 2,
        "model_config": {"input_size": 4, "hidden_size": 8, "output_size": 3},
    },
}


def _csv(path: Path, rows: int = 60) -> Path:
    rng = np.random.default_rng(0)
    lines = ["f1,f2,f3,f4,label"]
    for i in range(rows):
        x = rng.normal(size=4) + (i % 3)
        lines.append(",".join(f"{v:.4f}" for v in x) + f",{i % 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _config_file(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "session.json"
    path.write_text(json.dumps(config))
    return path


def _session(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": SID,
        "name": CONFIG["name"],
        "description": CONFIG["description"],
        "model_type": "neural_network",
        "status": "pending",
        "failure_reason": None,
        "current_round": 0,
        "total_rounds": 3,
        "min_participants": 2,
        "max_participants": 2,
        "participant_count": 0,
        "config": CONFIG["config"],
        "training_data": CONFIG["training_data"],
        "seed": 7,
        "reward_pool": None,
        "creator_address": ALICE.address,
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": "2025-01-01T00:00:00Z",
        "started_at": None,
        "completed_at": None,
        "global_model": None,
    }
    doc.update(over)
    return doc


def _round_metrics(n: int) -> dict[str, Any]:
    return {
        "round": n,
        "participants": 2,
        "examples": 48,
        "train_loss_mean": 1.0 / n,
        "train_loss_weighted": 1.0 / n,
        "train_accuracy_mean": 0.5 + 0.1 * n,
        "train_accuracy_weighted": 0.5 + 0.1 * n,
        "test_loss": 1.1 / n,
        "test_accuracy": 0.6 + 0.1 * n,
        "duration_ms": 120 * n,
        "slowest_training_ms": 80,
        "coordination_overhead_ms": 40,
    }


def _envelope(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "details": {}}})


Handler = Callable[[httpx.Request], httpx.Response]


class FakeServer:
    """Answers the requests the CLI makes with the API's shapes; records them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t"
        self.bodies.append(request.read())
        self.requests.append(request)
        return self.handler(request)

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], FakeServer]:
    def install(handler: Handler) -> FakeServer:
        server = FakeServer(handler)
        answer_from(monkeypatch, server)
        return server

    return install


def _cli(*args: str) -> Result:
    env = {"PARITY_SERVER_URL": "http://fl.test", "PARITY_TOKEN": "t"}
    return CliRunner().invoke(cli_app, ["fl", *args], env=env)


def _create_handler(request: httpx.Request) -> httpx.Response:
    if request.method == "PUT" and request.url.path == "/api/v1/storage/upload":
        digest = hashlib.sha256(request.content).hexdigest()
        return httpx.Response(201, json={"cid": f"bafk{digest[:20]}", "size": len(request.content)})
    if request.method == "POST" and request.url.path == f"{API}/sessions":
        body = json.loads(request.content)
        return httpx.Response(201, json=_session(training_data=body["training_data"]))
    return _envelope(404, "not_found", "no such route")


def test_create_uploads_the_dataset_and_names_it_in_the_session(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    server = fake(_create_handler)
    data = _csv(tmp_path / "iris.CSV")
    result = _cli("create", str(_config_file(tmp_path, CONFIG)), "--dataset", str(data), "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == SID
    (upload,) = server.calls("PUT", "/api/v1/storage/upload")
    assert upload.url.params["name"] == "iris.CSV" and upload.url.params["pin"] == "true"
    assert server.bodies[0] == data.read_bytes()
    cid = f"bafk{hashlib.sha256(data.read_bytes()).hexdigest()[:20]}"
    (post,) = server.calls("POST", f"{API}/sessions")
    sent = json.loads(post.content)
    assert sent["training_data"] == {
        **CONFIG["training_data"],
        "dataset_cid": cid,
        "data_format": "csv",
    }
    assert {k: v for k, v in sent.items() if k != "training_data"} == {
        k: v for k, v in CONFIG.items() if k != "training_data"
    }
    assert f"fl start {SID}" in result.stderr


def test_create_keeps_the_data_format_the_configuration_gives(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    server = fake(_create_handler)
    config = {**CONFIG, "training_data": {**CONFIG["training_data"], "data_format": "csv"}}
    data = _csv(tmp_path / "iris.txt")
    result = _cli("create", str(_config_file(tmp_path, config)), "--dataset", str(data), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == SID
    sent = json.loads(server.calls("POST", f"{API}/sessions")[0].content)
    assert sent["training_data"]["data_format"] == "csv"
    assert sent["training_data"]["dataset_cid"].startswith("bafk")


@pytest.mark.parametrize(
    ("training_data", "file_name", "says"),
    [
        ({"runner_dataset": "digits", "split_strategy": "iid"}, "d.csv", "runner_dataset"),
        ({"dataset_cid": "bafkold", "split_strategy": "iid"}, "d.csv", "dataset_cid"),
        ({"split_strategy": "iid"}, "d.parquet", "cannot tell the format"),
    ],
)
def test_create_refuses_an_ambiguous_dataset_before_uploading(
    fake: Callable[[Handler], FakeServer],
    tmp_path: Path,
    training_data: dict[str, Any],
    file_name: str,
    says: str,
) -> None:
    server = fake(_create_handler)
    config = {**CONFIG, "training_data": training_data}
    data = _csv(tmp_path / file_name)
    result = _cli("create", str(_config_file(tmp_path, config)), "--dataset", str(data))
    assert result.exit_code == 2
    assert says in result.stderr
    assert server.requests == []


def test_create_refuses_a_configuration_that_is_not_a_json_object(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    server = fake(_create_handler)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert _cli("create", str(bad)).exit_code == 2
    bad.write_text("[1, 2]")
    listed = _cli("create", str(bad))
    assert listed.exit_code == 2 and "JSON object" in listed.stderr
    assert server.requests == []


def test_create_refuses_nan_or_infinity_in_the_configuration_naming_the_field(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    """A NaN in CONFIG.json used to end in a traceback (the body could not be written)."""
    server = fake(_create_handler)
    bad = tmp_path / "nan.json"
    bad.write_text(json.dumps(CONFIG).replace('"learning_rate": 0.1', '"learning_rate": NaN'))
    assert "NaN" in bad.read_text()
    result = _cli("create", str(bad), "--dataset", str(_csv(tmp_path / "data.csv")))
    assert result.exit_code == 2 and not isinstance(result.exception, ValueError)
    assert "nan.json: config.learning_rate is NaN, which is not a JSON number" in result.stderr
    bad.write_text('{"name": "x", "config": {"model_config": {"sizes": [1, -Infinity]}}}')
    result = _cli("create", str(bad))
    assert result.exit_code == 2
    assert "config.model_config.sizes[1] is -Infinity" in result.stderr
    assert server.requests == []


def test_server_refusals_print_the_envelope_message_and_exit_1(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/start"):
            return _envelope(
                409, "insufficient_runners", "insufficient online runners: need 2, have 0"
            )
        return _envelope(422, "invalid_input", "config.learning_rate: learning_rate is required")

    fake(refuse)
    created = _cli("create", str(_config_file(tmp_path, CONFIG)))
    assert created.exit_code == 1
    assert "config.learning_rate: learning_rate is required (invalid_input)" in created.stderr
    started = _cli("start", SID)
    assert started.exit_code == 1
    assert "insufficient online runners: need 2, have 0 (insufficient_runners)" in started.stderr


class ScriptedSession:
    """A session that completes one more round each time it is read, then ends as ``ending``."""

    def __init__(self, ending: str = "completed", reason: str | None = None) -> None:
        self.reads = 0
        self.ending = ending
        self.reason = reason
        self.outages: set[int] = set()  # reads answered 503 (a restarting server)

    def rounds_done(self) -> int:
        done = min(self.reads, 3)
        return done if self.ending == "completed" else min(done, 1)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == f"{API}/sessions/{SID}":
            self.reads += 1
            if self.reads in self.outages:
                return _envelope(503, "unavailable", "starting")
            done = self.rounds_done()
            ended = self.reads > 3 if self.ending == "completed" else self.reads > 1
            status = self.ending if ended else "active"
            return httpx.Response(
                200,
                json=_session(
                    status=status,
                    failure_reason=self.reason if ended else None,
                    current_round=min(done + 1, 3),
                    participant_count=2,
                ),
            )
        if path == f"{API}/sessions/{SID}/metrics":
            rounds = [_round_metrics(n) for n in range(1, self.rounds_done() + 1)]
            return httpx.Response(200, json={"session_id": SID, "rounds": rounds})
        return _envelope(404, "not_found", "no such route")


def test_watch_follows_the_rounds_and_exits_0_when_the_session_completes(
    fake: Callable[[Handler], FakeServer],
) -> None:
    script = ScriptedSession()
    script.outages = {2}  # one failed poll is ridden out
    fake(script)
    result = _cli("watch", SID, "--interval", "0")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("round ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "test acc 0.9000" in lines[2] and "train loss 0.3333" in lines[2]
    assert result.stdout.strip() == (
        f"session {SID} completed after 3 rounds: test acc 0.9000  train loss 0.3333"
    )


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_watch_exits_1_with_the_reason_when_the_session_does_not_complete(
    fake: Callable[[Handler], FakeServer], ending: str
) -> None:
    fake(ScriptedSession(ending, reason="round 2: 1 of 2 updates, needs 2"))
    result = _cli("watch", SID, "--interval", "0", "-q", "--json")
    assert result.exit_code == 1
    assert f"session {SID} {ending}: round 2: 1 of 2 updates, needs 2" in result.stderr
    final = json.loads(result.stdout)
    assert final["session"]["status"] == ending and len(final["metrics"]["rounds"]) == 1


def test_watch_gives_up_after_repeated_failed_polls(
    fake: Callable[[Handler], FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fl_cli, "RIDE_OUT_SECONDS", 0.0)
    pauses: list[float] = []
    monkeypatch.setattr(fl_cli, "_pause", pauses.append)
    script = ScriptedSession()
    script.outages = set(range(1, 100))
    fake(script)
    result = _cli("watch", SID, "--interval", "0", "-q")
    assert result.exit_code == 1
    assert f"did not answer {fl_cli.MAX_POLL_ERRORS} polls in a row" in result.stderr
    assert script.reads == fl_cli.MAX_POLL_ERRORS
    # --interval 0 does not spin on a server that is down: a failed poll waits a second.
    assert pauses == [fl_cli.FAILED_POLL_PAUSE_SECONDS] * (fl_cli.MAX_POLL_ERRORS - 1)


def test_watch_rides_out_more_failed_polls_than_the_count_while_the_outage_is_short(
    fake: Callable[[Handler], FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server restart outlasts five polls at the default 2 s interval: failed polls alone
    ended the watch of a session that went on (and completed) once the server was back."""
    monkeypatch.setattr(fl_cli, "_pause", lambda seconds: None)
    script = ScriptedSession()
    script.outages = set(range(2, 2 + 2 * fl_cli.MAX_POLL_ERRORS))
    fake(script)
    result = _cli("watch", SID, "--interval", "0", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith(f"session {SID} completed after 3 rounds")


def test_watch_of_a_pending_session_says_so_once_and_waits_for_its_start(
    fake: Callable[[Handler], FakeServer],
) -> None:
    """After a `fl start` refused for want of runners, `fl watch` waited without a word."""
    script = ScriptedSession()
    pending_reads = 3

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"{API}/sessions/{SID}" and script.reads < pending_reads:
            script.reads += 1
            return httpx.Response(200, json=_session(status="pending", current_round=0))
        if request.url.path == f"{API}/sessions/{SID}/metrics" and script.reads <= pending_reads:
            return httpx.Response(200, json={"session_id": SID, "rounds": []})
        return script(request)

    fake(handle)
    result = _cli("watch", SID, "--interval", "0", "-q")
    assert result.exit_code == 0, result.output
    note = f"session {SID} is pending: it has no rounds until it is started"
    assert result.stderr.count(note) == 1
    assert f"(parity-server fl start {SID})" in result.stderr


def test_watch_stops_on_a_refusal(fake: Callable[[Handler], FakeServer]) -> None:
    fake(lambda r: _envelope(404, "not_found", "session not found"))
    result = _cli("watch", SID, "--interval", "0", "-q")
    assert result.exit_code == 1 and "session not found (not_found)" in result.stderr


def _model_bytes(scale: float) -> bytes:
    weights = {
        "fc1.weight": np.full((8, 4), scale, dtype=np.float32),
        "fc1.bias": np.zeros(8, dtype=np.float32),
        "fc2.weight": np.full((3, 8), -scale, dtype=np.float32),
        "fc2.bias": np.zeros(3, dtype=np.float32),
    }
    return encode(weights)


def _model_meta(data: bytes, round_: int) -> dict[str, Any]:
    return {
        "session_id": SID,
        "session_name": CONFIG["name"],
        "model_type": "neural_network",
        "status": "active",
        "round": round_,
        "intermediate": True,
        "cid": f"bafk-round-{round_}",
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "safetensors",
        "tensors": {"fc1.weight": [8, 4], "fc1.bias": [8], "fc2.weight": [3, 8], "fc2.bias": [3]},
        "metrics": [_round_metrics(n) for n in range(1, round_ + 1)],
        "total_rounds": 3,
        "completed_at": None,
    }


def _model_handler(metas: Iterator[dict[str, Any]], files: Iterator[bytes]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"{API}/sessions/{SID}/model":
            return httpx.Response(200, json=next(metas))
        if request.url.path == f"{API}/sessions/{SID}/model/download":
            return httpx.Response(200, content=next(files))
        return _envelope(404, "not_found", "no such route")

    return handle


def test_model_is_downloaded_and_checked_against_the_recorded_sha256(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    data = _model_bytes(0.5)
    fake(_model_handler(iter([_model_meta(data, 2)]), iter([data])))
    out = tmp_path / "global.safetensors"
    result = _cli("model", SID, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "round 2/3 (intermediate), 4 tensors" in result.stderr
    assert decode(out.read_bytes())["fc2.weight"].tolist() == [[-0.5] * 8] * 3


def test_model_reads_the_record_again_when_a_round_completes_during_the_download(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    old, new = _model_bytes(0.5), _model_bytes(0.75)
    fake(_model_handler(iter([_model_meta(old, 2), _model_meta(new, 3)]), iter([new])))
    out = tmp_path / "global.safetensors"
    result = _cli("model", SID, "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["round"] == 3
    assert out.read_bytes() == new


def test_model_whose_bytes_do_not_match_is_not_kept(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    recorded = _model_bytes(0.5)
    meta = _model_meta(recorded, 2)
    fake(_model_handler(iter([meta, meta]), iter([b"tampered", b"tampered"])))
    out = tmp_path / "global.safetensors"
    result = _cli("model", SID, "-o", str(out))
    assert result.exit_code == 1
    assert f"not {meta['sha256']}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_model_into_a_directory_writes_id_safetensors_there(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    """``-o DIR`` used to end in a traceback (IsADirectoryError) and leave ``DIR.part``."""
    data = _model_bytes(0.5)
    fake(_model_handler(iter([_model_meta(data, 2)]), iter([data])))
    result = _cli("model", SID, "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / f"{SID}.safetensors"
    assert result.stdout.strip() == str(out) and out.read_bytes() == data
    assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.endswith(".part")) == []


def test_model_to_a_path_that_cannot_be_written_is_said_without_a_traceback(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    data = _model_bytes(0.5)
    fake(_model_handler(iter([_model_meta(data, 2)]), iter([data])))
    out = tmp_path / "no-such-dir" / "m.safetensors"
    result = _cli("model", SID, "-o", str(out))
    assert result.exit_code == 2
    assert f"error: cannot write {out}: No such file or directory" in result.stderr
    assert not isinstance(result.exception, OSError)
    assert list(tmp_path.iterdir()) == []


def test_model_before_the_first_round_prints_the_refusal(
    fake: Callable[[Handler], FakeServer], tmp_path: Path
) -> None:
    fake(lambda r: _envelope(404, "no_global_model", "the session has no global model yet"))
    result = _cli("model", SID, "-o", str(tmp_path / "m.safetensors"))
    assert result.exit_code == 1
    assert "the session has no global model yet (no_global_model)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _paged(total: int) -> Handler:
    everyone = [_session(id=f"s-{i:03d}", name=f"session {i}") for i in range(total)]

    def handle(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params["limit"])
        start = int(request.url.params.get("cursor", "0"))
        page = everyone[start : start + limit]
        more = start + limit < total
        return httpx.Response(
            200,
            json={
                "sessions": page,
                "count": len(page),
                "next_cursor": str(start + limit) if more else None,
                "limit": limit,
            },
        )

    return handle


def test_list_follows_next_cursor_through_every_page(fake: Callable[[Handler], FakeServer]) -> None:
    server = fake(_paged(250))
    result = _cli("list")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "ROUND", "PARTICIPANTS", "CREATED"]
    assert [row.split()[0] for row in rows] == [f"s-{i:03d}" for i in range(250)]
    assert [r.url.params.get("cursor") for r in server.requests] == [None, "100", "200"]


def test_list_stops_at_the_limit(fake: Callable[[Handler], FakeServer]) -> None:
    server = fake(_paged(250))
    result = _cli("list", "--limit", "120", "--json")
    assert result.exit_code == 0, result.output
    assert [s["id"] for s in json.loads(result.stdout)] == [f"s-{i:03d}" for i in range(120)]
    assert [r.url.params["limit"] for r in server.requests] == ["100", "20"]


def test_status_prints_the_session_its_latest_round_and_the_metrics_table(
    fake: Callable[[Handler], FakeServer],
) -> None:
    latest = {
        "id": "r-3",
        "session_id": SID,
        "number": 3,
        "status": "collecting",
        "opened_at": "2025-01-01T00:01:00Z",
        "deadline_at": "2025-01-01T00:06:00Z",
        "closed_at": None,
        "participants": 2,
        "updates_received": 1,
        "dropped": 0,
        "required_updates": 2,
        "failure_reason": None,
        "model_cid": None,
        "metrics": None,
    }

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == f"{API}/sessions/{SID}":
            return httpx.Response(200, json=_session(status="active", current_round=3))
        if path == f"{API}/sessions/{SID}/rounds":
            assert request.url.params["limit"] == "1"
            return httpx.Response(200, json={"items": [latest], "next_cursor": None, "limit": 1})
        if path == f"{API}/sessions/{SID}/metrics":
            rounds = [_round_metrics(1), _round_metrics(2)]
            return httpx.Response(200, json={"session_id": SID, "rounds": rounds})
        return _envelope(404, "not_found", "no such route")

    fake(handle)
    result = _cli("status", SID)
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert re.match(r"status\s+active$", out[1]) and re.match(r"round\s+3/3$", out[2])
    assert "latest round  3: collecting, 1/2 updates (needs 2)" in result.stdout
    table = out[out.index("") + 1 :]
    assert table[0].split() == [
        "ROUND",
        "PARTICIPANTS",
        "EXAMPLES",
        "TRAIN_LOSS",
        "TRAIN_ACC",
        "TEST_LOSS",
        "TEST_ACC",
        "DURATION",
        "OVERHEAD",
    ]
    assert table[2].split() == [
        "2", "2", "48", "0.5000", "0.7000", "0.5500", "0.8000", "240ms", "40ms"
    ]  # fmt: skip
    as_json = json.loads(_cli("status", SID, "--json").stdout)
    assert as_json["latest_round"]["number"] == 3 and len(as_json["metrics"]["rounds"]) == 2


# Against the real server.


def test_create_list_status_and_cancel_against_the_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = cli_env(server)
    cli = cli_for("fl", env)

    data = _csv(tmp_path / "iris.csv")
    created = cli("create", str(_config_file(tmp_path, CONFIG)), "--dataset", str(data), "-q")
    assert created.exit_code == 0, created.output
    session_id = created.stdout.strip()

    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    (mine,) = [s for s in json.loads(listed.stdout) if s["id"] == session_id]
    assert mine["status"] == "pending"
    assert mine["training_data"]["data_format"] == "csv"
    stored = mine["training_data"]["dataset_cid"]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get(
            f"/api/v1/storage/download/{stored}",
            headers={"Authorization": f"Bearer {env['PARITY_TOKEN']}"},
        )
        assert r.content == data.read_bytes()

    table = cli("list")
    assert any(line.split()[0] == session_id for line in table.stdout.splitlines()[1:])

    status = cli("status", session_id)
    assert status.exit_code == 0, status.output
    assert re.search(r"^status\s+pending$", status.stdout, re.MULTILINE)

    no_runners = cli("start", session_id)
    assert no_runners.exit_code == 1
    assert "insufficient online runners: need 2, have 0" in no_runners.stderr

    no_model = cli("model", session_id, "-o", str(tmp_path / "m.safetensors"))
    assert no_model.exit_code == 1 and "no_global_model" in no_model.stderr

    cancelled = cli("cancel", session_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.strip() == f"session {session_id} cancelled"
    final = json.loads(cli("status", session_id, "--json").stdout)
    assert final["session"]["status"] == "cancelled" and final["latest_round"] is None

    watched = cli("watch", session_id, "--interval", "0", "-q")
    assert watched.exit_code == 1 and f"session {session_id} cancelled" in watched.stderr


def test_a_configuration_the_server_refuses_names_the_field(
    server: ServerProcess, tmp_path: Path
) -> None:
    config = json.loads(json.dumps(CONFIG))
    del config["config"]["learning_rate"]
    data = _csv(tmp_path / "iris.csv")
    cli = cli_for("fl", cli_env(server))
    result = cli("create", str(_config_file(tmp_path, config)), "--dataset", str(data), "-q")
    assert result.exit_code == 1
    assert "config.learning_rate" in result.stderr and "invalid_input" in result.stderr


def _play_participant(url: str, runner_token: str, rounds: int, done: list[int]) -> None:
    """Claim each round's fl_train task and send the global model back unchanged as the
    update (so every aggregate equals the model the session started from)."""
    headers = {"Authorization": f"Bearer {runner_token}"}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
        for _ in range(rounds):
            got = http.post("/api/v1/runners/tasks/claim", params={"wait": 20})
            if got.status_code != 200:
                done.append(got.status_code)
                return
            claim = got.json()
            cfg = claim["task"]["config"]
            model = http.get(f"/api/v1/storage/download/{cfg['global_model']['cid']}")
            update = {
                "session_id": cfg["session_id"],
                "round_id": cfg["round_id"],
                "task_id": claim["task"]["id"],
                "claim_token": claim["claim_token"],
                "weights": {k: v.tolist() for k, v in decode(model.content).items()},
                "data_size": cfg["data"]["rows"],
                "loss": 0.25,
                "accuracy": 0.75,
                "training_time_ms": 5,
            }
            r = http.post("/api/v1/federated-learning/model-updates", json=update)
            done.append(r.status_code)


def test_watch_and_model_follow_a_session_to_its_end(server: ServerProcess, tmp_path: Path) -> None:
    env = cli_env(server)
    cli = cli_for("fl", env)

    config = {**CONFIG, "total_rounds": 2, "training_data": {"split_strategy": "iid", "seed": 3}}
    created = cli(
        "create",
        str(_config_file(tmp_path, config)),
        "--dataset",
        str(_csv(tmp_path / "d.csv")),
        "-q",
    )
    assert created.exit_code == 0, created.output
    session_id = created.stdout.strip()
    fl_runner = {"fl": True, "cpu_cores": 1}
    runner_tokens = [
        register_runner(
            server.url, env["PARITY_TOKEN"], device_id=f"fl-cli-{i}", capabilities=fl_runner
        )
        for i in range(2)
    ]
    started = cli("start", session_id)
    assert started.exit_code == 0, started.output
    assert started.stdout.strip() == f"session {session_id} active: 2 participants, round 1/2"

    initial = tmp_path / "initial.safetensors"
    first = cli("model", session_id, "-o", str(initial))
    assert first.exit_code == 0, first.output
    assert "round 0/2 (intermediate)" in first.stderr
    status = cli("status", session_id)
    assert "latest round  1: collecting, 0/2 updates (needs 2)" in status.stdout

    done: list[int] = []
    players = [
        threading.Thread(target=_play_participant, args=(server.url, t, 2, done))
        for t in runner_tokens
    ]
    for p in players:
        p.start()
    try:
        watched = cli("watch", session_id, "--interval", "0.1")
    finally:
        for p in players:
            p.join(timeout=60)
    assert done == [200, 200, 200, 200]
    assert watched.exit_code == 0, watched.output
    lines = [line for line in watched.stderr.splitlines() if line.startswith("round ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "train acc 0.7500  train loss 0.2500" in lines[-1]
    assert watched.stdout.startswith(f"session {session_id} completed after 2 rounds")

    final = tmp_path / "final.safetensors"
    last = cli("model", session_id, "-o", str(final))
    assert last.exit_code == 0, last.output
    assert "round 2/2," in last.stderr and "intermediate" not in last.stderr
    start_weights, end_weights = decode(initial.read_bytes()), decode(final.read_bytes())
    assert start_weights.keys() == end_weights.keys() == {
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"
    }  # fmt: skip
    for name, tensor in start_weights.items():
        np.testing.assert_allclose(end_weights[name], tensor, rtol=1e-6, atol=1e-7)
    table = cli("status", session_id).stdout.splitlines()
    rows = table[table.index("") + 2 :]
    assert [row.split()[:3] for row in rows] == [["1", "2", "60"], ["2", "2", "60"]]


def test_the_json_of_list_status_and_watch_says_what_it_prints() -> None:
    """These three print documents of the CLI's making, not one server answer: --help says which."""

    def help_of(command: str) -> str:
        shown = CliRunner().invoke(cli_app, ["fl", command, "--help"], env={"COLUMNS": "300"})
        assert shown.exit_code == 0, shown.output
        return " ".join(shown.output.replace("│", " ").split())

    assert "as one JSON array, every page merged" in help_of("list")
    assert '"latest_round": the newest of GET rounds or null' in help_of("status")
    assert '{"session": GET session, "metrics": GET metrics} of the last poll' in help_of("watch")
