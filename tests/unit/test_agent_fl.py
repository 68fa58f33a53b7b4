"""The runner's ``fl_train`` executor against a scripted server: it fetches the global model and
its partition by CID (hash-checked), trains from the global model off the event loop (the
claim's lease keeps being renewed), posts the update once (the server completes the task with
it), fails the task with a clear reason on a bad config, a hash mismatch or a refused update,
reads and partitions runner-local data sets exactly as the core partitioner does, and is
advertised (or not) at registration per ``--fl`` / ``--no-fl`` / ``--fl-dataset``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import typer
from eth_account import Account
from numpy.typing import NDArray
from typer.testing import CliRunner

from parity.agent import cli as runner_cli
from parity.agent.client import ServerClient
from parity.agent.executors import CancelToken, Outcome
from parity.agent.fl import FlExecutor, LocalDatasets, load_local, parse_dataset_specs
from parity.agent.fl import executor as executor_module
from parity.agent.loop import Runner, RunnerOptions
from parity.core.fl import tensors
from parity.core.fl.model import init_weights, parse_model_spec
from parity.core.fl.partitioning import parse_options, partition
from parity.core.fl.train import TrainingStopped, parse_train_config, train_local
from parity.fl.datasets import plan_partitions
from tests.conftest import until

ACCOUNT = Account.from_key("0x" + "46" * 32)
TOKEN = "claim-token-fl-0123456789"
MODEL_CONFIG = {"input_size": 4, "hidden_size": 6, "output_size": 3}
SPEC = parse_model_spec("neural_network", MODEL_CONFIG)
GLOBAL = init_weights(SPEC, seed=11)
TRAIN = {"learning_rate": 0.1, "batch_size": 8, "local_epochs": 2, "mu": 0.0}


def dataset(rows: int = 60, seed: int = 3) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows).astype(np.int64)
    x = (rng.standard_normal((rows, 4)) + y[:, None]).astype(np.float32)
    return x, y


def npz(x: NDArray[Any], y: NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, X=x, y=y)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


X, Y = dataset()
MODEL_BYTES = tensors.encode(GLOBAL)
PART_BYTES = npz(X, Y)
STORE = {"bafymodel": MODEL_BYTES, "bafypart": PART_BYTES}


def fl_config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "session_id": "s-1", "round_id": "r-1", "round": 1,
        "participant_index": 0, "num_participants": 2,
        "model_type": "neural_network", "model_config": MODEL_CONFIG,
        "global_model": {"cid": "bafymodel", "sha256": sha(MODEL_BYTES), "format": "safetensors"},
        "data": {"kind": "partition", "cid": "bafypart", "sha256": sha(PART_BYTES),
                 "format": "npz", "rows": len(Y)},
        "train_config": dict(TRAIN), "seed": 1234,
        "deadline_at": "2030-01-01T00:00:00Z",
        "update_limits": {"max_norm": None, "max_json_bytes": 8388608}, "privacy": None,
    }  # fmt: skip
    cfg.update(over)
    return cfg


def fl_task(config: dict[str, Any]) -> dict[str, Any]:
    return {"id": "t-fl", "type": "fl_train", "status": "running", "config": config}


class Server:
    """The runner API and the content store, scripted; ``update_answers`` are (status, body)
    for successive model updates (then 200)."""

    def __init__(self, queue: list[dict[str, Any]] | None = None) -> None:
        self.queue = list(queue or [])
        self.store = dict(STORE)
        self.update_answers: list[tuple[int, dict[str, Any]]] = []
        self.updates: list[dict[str, Any]] = []
        self.uploads: list[bytes] = []
        self.registrations: list[dict[str, Any]] = []
        self.beats: list[dict[str, Any]] = []
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.revoke = False
        self.downloads: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/api/v1/storage/download/"):
            assert request.headers["authorization"] == "Bearer ps_run_t"
            self.downloads.append(path.rsplit("/", 1)[-1])
            data = self.store.get(self.downloads[-1])
            return httpx.Response(200, content=data) if data else httpx.Response(404)
        if path == "/api/v1/storage/upload":
            self.uploads.append(request.content)
            return httpx.Response(201, json={"cid": "bafyupdate"})
        body = json.loads(request.content) if request.content else {}
        if path == "/api/v1/federated-learning/model-updates":
            self.updates.append(body)
            status, answer = self.update_answers.pop(0) if self.update_answers else (200, {})
            return httpx.Response(status, json=answer or {"update": {"round": 1, "norm": 0.1}})
        if path == "/api/v1/auth/nonce":
            return httpx.Response(200, json={"message": "sign in", "nonce": "n"})
        if path == "/api/v1/auth/token":
            return httpx.Response(200, json={"token": "ps_sess_test"})
        if path == "/api/v1/runners":
            self.registrations.append(body)
            return httpx.Response(
                201, json={"runner": {"id": "r1"}, "runner_token": "ps_run_t", "claims": []}
            )
        if path == "/api/v1/runners/heartbeat":
            self.beats.append(body)
            revoked = [TOKEN] if self.revoke else []
            return httpx.Response(200, json={"revoked": revoked, "cancel": [], "renewed": []})
        if path == "/api/v1/runners/tasks/claim":
            if self.queue:
                return httpx.Response(200, json={"claims": [self.queue.pop(0)]})
            await asyncio.sleep(0.05)  # a long-poll that found nothing
            return httpx.Response(204)
        action = path.rsplit("/", 1)[-1]
        if action in ("complete", "fail"):
            self.reports.append((action, body))
        return httpx.Response(200, json={})


def client_for(server: Server) -> ServerClient:
    client = ServerClient("http://parity.test", transport=httpx.MockTransport(server))
    client.runner_token = "ps_run_t"
    return client


async def execute(
    server: Server, config: dict[str, Any], datasets: LocalDatasets | None = None
) -> Outcome:
    client = client_for(server)
    executor = FlExecutor(client, datasets)
    executor.claim_token_of = lambda task_id: TOKEN if task_id == "t-fl" else None
    lines: list[str] = []

    async def logs(new: list[str]) -> None:
        lines.extend(new)

    try:
        return await executor.run(fl_task(config), logs, CancelToken())
    finally:
        await client.close()


def posted_weights(update: dict[str, Any]) -> dict[str, NDArray[np.float32]]:
    return tensors.from_lists(update["weights"], SPEC.shapes())


def expected(x: NDArray[Any], y: NDArray[Any], **train: Any) -> dict[str, NDArray[np.float32]]:
    cfg = {**TRAIN, **train}
    return train_local(SPEC, GLOBAL, x, y, parse_train_config(cfg, mu=cfg["mu"]), 1234).weights


async def test_an_update_is_posted_once_with_the_weights_trained_from_the_global_model() -> None:
    server = Server()
    outcome = await execute(server, fl_config())
    assert outcome.ok and outcome.reported, outcome.error
    [update] = server.updates
    assert (update["session_id"], update["round_id"], update["task_id"]) == ("s-1", "r-1", "t-fl")
    assert update["claim_token"] == TOKEN and update["data_size"] == len(Y)
    assert np.isfinite(update["loss"]) and 0.0 <= update["accuracy"] <= 1.0
    assert isinstance(update["training_time_ms"], int) and update["training_time_ms"] >= 0
    weights = posted_weights(update)
    assert {n: w.shape for n, w in weights.items()} == SPEC.shapes()
    for name, want in expected(X, Y).items():
        np.testing.assert_array_equal(weights[name], want)


async def test_a_large_model_is_decoded_and_written_in_a_thread_with_the_same_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small models are decoded and their update written on the loop; past INLINE_MODEL_BYTES
    # in a worker thread. Both ways post the same update.
    posted = []
    for limit in (executor_module.INLINE_MODEL_BYTES, 0):
        monkeypatch.setattr(executor_module, "INLINE_MODEL_BYTES", limit)
        hops: list[str] = []
        real = executor_module.asyncio.to_thread

        async def counted(fn: Any, *args: Any, hops: list[str] = hops, real: Any = real) -> Any:
            hops.append(getattr(fn, "__name__", "?"))
            return await real(fn, *args)

        monkeypatch.setattr(executor_module.asyncio, "to_thread", counted)
        server = Server()
        outcome = await execute(server, fl_config())
        assert outcome.ok, outcome.error
        monkeypatch.setattr(executor_module.asyncio, "to_thread", real)
        assert ("decode" in hops, "_json_body" in hops) == ((limit == 0),) * 2, hops
        [update] = server.updates
        posted.append({k: v for k, v in update.items() if k != "training_time_ms"})
    assert posted[0] == posted[1]


async def test_the_partition_is_fetched_once_and_the_global_model_every_round() -> None:
    server = Server()
    client = client_for(server)
    executor = FlExecutor(client)
    executor.claim_token_of = lambda task_id: TOKEN

    async def logs(lines: list[str]) -> None:
        return None

    try:
        for number in (1, 2):
            config = fl_config(round=number, round_id=f"r-{number}")
            outcome = await executor.run(fl_task(config), logs, CancelToken())
            assert outcome.ok, outcome.error
    finally:
        await client.close()
    assert sorted(server.downloads) == ["bafymodel", "bafymodel", "bafypart"]
    assert [u["round_id"] for u in server.updates] == ["r-1", "r-2"]
    assert server.updates[0]["weights"] == server.updates[1]["weights"]  # same inputs, same seed


def inline(data: bytes) -> dict[str, Any]:
    model = fl_config()["global_model"]
    return {**model, "data_base64": base64.b64encode(data).decode()}


async def test_a_global_model_the_claim_carries_is_trained_from_without_a_download() -> None:
    server = Server()
    outcome = await execute(server, fl_config(global_model=inline(MODEL_BYTES)))
    assert outcome.ok, outcome.error
    assert server.downloads == ["bafypart"]
    for name, want in expected(X, Y).items():
        np.testing.assert_array_equal(posted_weights(server.updates[0])[name], want)


async def test_inline_model_bytes_other_than_the_sha256_names_are_replaced_by_a_download() -> None:
    other = tensors.encode(init_weights(SPEC, seed=12))
    server = Server()
    outcome = await execute(server, fl_config(global_model=inline(other)))
    assert outcome.ok, outcome.error
    assert sorted(server.downloads) == ["bafymodel", "bafypart"]
    for name, want in expected(X, Y).items():  # trained from the store's model, not the other
        np.testing.assert_array_equal(posted_weights(server.updates[0])[name], want)


async def test_inline_model_text_that_is_not_base64_fails_the_task_naming_the_field() -> None:
    model = {**fl_config()["global_model"], "data_base64": "not base64!"}
    server = Server()
    outcome = await execute(server, fl_config(global_model=model))
    assert not outcome.ok
    assert "global_model.data_base64" in (outcome.error or "")
    assert server.downloads == [] and server.updates == []


async def test_with_a_tiny_learning_rate_the_update_stays_at_the_served_global_model() -> None:
    server = Server()
    outcome = await execute(server, fl_config(train_config={**TRAIN, "learning_rate": 1e-7}))
    assert outcome.ok, outcome.error
    weights = posted_weights(server.updates[0])
    other = init_weights(SPEC, seed=12)  # what training from a fresh init would start at
    assert max(float(np.abs(weights[n] - GLOBAL[n]).max()) for n in GLOBAL) < 1e-5
    assert max(float(np.abs(weights[n] - other[n]).max()) for n in GLOBAL) > 0.1


@pytest.mark.parametrize("which", ["global_model", "data"])
async def test_a_sha256_mismatch_fails_the_task_naming_the_cid(which: str) -> None:
    config = fl_config()
    config[which] = {**config[which], "sha256": "0" * 64}
    server = Server([{"task": fl_task(config), "claim_token": TOKEN}])
    runner, job = await start(server, FlExecutor(client_for(server)))
    try:
        await until(lambda: server.reports)
    finally:
        await stop(runner, job)
    [(action, body)] = server.reports
    what = {"global_model": "global model", "data": "partition"}[which]
    assert action == "fail" and body["claim_token"] == TOKEN
    assert f"sha256 mismatch for {what} {config[which]['cid']}" in body["error"]
    assert server.updates == [] and runner.failed == 1


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"train_config": {"batch_size": 8, "local_epochs": 1}}, "train_config.learning_rate"),
        ({"data": {"kind": "files"}}, "data.kind"),
        ({"participant_index": 2}, "participant_index"),
        ({"model_config": {"input_size": 4, "output_size": 3}}, "model_config.hidden_sizes"),
        ({"global_model": {"cid": "bafymodel", "sha256": "xyz"}}, "global_model.sha256"),
        ({"privacy": {"dp": True}}, "privacy"),
    ],
)
async def test_a_bad_config_fails_before_anything_is_fetched(
    change: dict[str, Any], named: str
) -> None:
    server = Server()
    server.store.clear()
    outcome = await execute(server, fl_config(**change))
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.startswith(f"invalid fl_train config: {named}")
    assert server.updates == []


async def test_a_partition_whose_rows_differ_from_the_task_fails() -> None:
    outcome = await execute(Server(), fl_config(data={**fl_config()["data"], "rows": 7}))
    assert not outcome.ok and "60 rows; the task says 7" in str(outcome.error)


async def test_a_late_update_is_refused_as_round_closed_logged_and_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warned: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(executor_module.log, "warning", lambda e, **kw: warned.append((e, kw)))
    server = Server()
    closed = {"error": {"code": "round_closed", "message": "round 1 is closed", "details": {}}}
    server.update_answers = [(409, closed)]
    outcome = await execute(server, fl_config())
    assert not outcome.ok and "round 1 closed before this update arrived" in str(outcome.error)
    assert len(server.updates) == 1
    assert [e for e, _ in warned] == ["fl_update_round_closed"]


async def test_a_server_error_is_retried_with_the_same_update() -> None:
    server = Server()
    server.update_answers = [(503, {"error": {"code": "unavailable", "message": "busy"}})]
    outcome = await execute(server, fl_config())
    assert outcome.ok and len(server.updates) == 2
    assert server.updates[0] == server.updates[1]


async def test_a_refused_update_fails_the_task_with_the_servers_reason() -> None:
    server = Server()
    bad = {"error": {"code": "validation_error", "message": "tensor 'fc1.weight' too far"}}
    server.update_answers = [(422, bad)]
    outcome = await execute(server, fl_config())
    assert not outcome.ok and "fc1.weight" in str(outcome.error) and len(server.updates) == 1


async def test_an_update_over_the_json_cap_goes_to_the_store_as_safetensors() -> None:
    server = Server()
    outcome = await execute(server, fl_config(update_limits={"max_json_bytes": 100}))
    assert outcome.ok, outcome.error
    [update] = server.updates
    [model] = server.uploads
    assert "weights" not in update and update["update_cid"] == "bafyupdate"
    assert update["update_sha256"] == sha(model)
    for name, want in expected(X, Y).items():
        np.testing.assert_array_equal(tensors.decode(model)[name], want)


def write_csv(path: Path, x: NDArray[Any], names: list[str]) -> None:
    lines = ["a,b,c,d,label"] + [
        ",".join([*(repr(float(v)) for v in row), name]) for row, name in zip(x, names, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def local_data(options: dict[str, Any], test_split: float | None) -> dict[str, Any]:
    return {
        "kind": "runner_dataset", "name": "pets",
        "partition": {"strategy": "non_iid", "options": options, "seed": 7,
                      "num_participants": 3, "participant_index": 1, "test_split": test_split},
    }  # fmt: skip


async def test_a_runner_dataset_partition_equals_the_core_partition_for_the_index(
    tmp_path: Path,
) -> None:
    x, y = dataset(rows=90, seed=5)
    # Label names sort as cat, dog, eel: their class ids are the generator's labels.
    write_csv(tmp_path / "local.csv", x, [["cat", "dog", "eel"][c] for c in y])
    options = {"alpha": 0.5, "min_samples": 5}
    server = Server()
    datasets = LocalDatasets({"pets": tmp_path / "local.csv"})
    outcome = await execute(server, fl_config(data=local_data(options, None)), datasets)
    assert outcome.ok, outcome.error
    mine = partition(parse_options("non_iid", options, 3), 3, 7, labels=y)[1]
    update = server.updates[0]
    assert update["data_size"] == len(mine)
    for name, want in expected(x[mine], y[mine]).items():
        np.testing.assert_allclose(posted_weights(update)[name], want, rtol=0, atol=1e-6)


async def test_a_runner_dataset_with_a_test_split_trains_on_the_servers_partition_of_it(
    tmp_path: Path,
) -> None:
    x, y = dataset(rows=90, seed=5)
    write_csv(tmp_path / "local.csv", x, [str(int(c)) for c in y])
    options = {"alpha": 0.5, "min_samples": 5}
    server = Server()
    datasets = LocalDatasets({"pets": tmp_path / "local.csv"})
    outcome = await execute(server, fl_config(data=local_data(options, 0.2)), datasets)
    assert outcome.ok, outcome.error
    plan = plan_partitions(
        x, y, strategy="non_iid", metadata=options, num_participants=3, seed=7, test_split=0.2
    )
    assert plan.test_indices is not None and len(plan.test_indices) == 18
    px, py = plan.participants[1]
    update = server.updates[0]
    assert update["data_size"] == len(py)
    for name, want in expected(px, py).items():
        np.testing.assert_allclose(posted_weights(update)[name], want, rtol=0, atol=1e-6)


async def test_an_unknown_runner_dataset_fails_the_task_naming_what_is_served() -> None:
    data = {
        "kind": "runner_dataset", "name": "other",
        "partition": {"strategy": "iid", "options": {}, "seed": 1,
                      "num_participants": 2, "participant_index": 0},
    }  # fmt: skip
    outcome = await execute(Server(), fl_config(data=data), LocalDatasets({"pets": Path("x.csv")}))
    assert not outcome.ok and "no data set 'other' (it serves: pets)" in str(outcome.error)


def test_local_files_load_as_csv_npz_and_json_with_the_same_arrays(tmp_path: Path) -> None:
    x, y = dataset(rows=12)
    write_csv(tmp_path / "d.csv", x, [str(int(c)) for c in y])
    (tmp_path / "d.npz").write_bytes(npz(x, y))
    (tmp_path / "d.json").write_text(json.dumps({"features": x.tolist(), "labels": y.tolist()}))
    for name in ("d.csv", "d.npz", "d.json"):
        got_x, got_y = load_local(tmp_path / name)
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)


async def test_an_unreadable_local_file_fails_the_task_naming_the_data_set_and_the_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "bad.csv").write_text("a,b,label\n1,2,0\n3,1\n")
    data = {
        "kind": "runner_dataset", "name": "bad",
        "partition": {"strategy": "iid", "options": {}, "seed": 1,
                      "num_participants": 2, "participant_index": 0},
    }  # fmt: skip
    outcome = await execute(
        Server(), fl_config(data=data), LocalDatasets({"bad": tmp_path / "bad.csv"})
    )
    assert not outcome.ok
    assert "data set 'bad'" in str(outcome.error) and "line 3" in str(outcome.error)


async def start(server: Server, *executors: FlExecutor) -> tuple[Runner, asyncio.Task[None]]:
    client = executors[0].client if executors else client_for(server)
    options = RunnerOptions(
        device_id="dev", push=False, heartbeat_interval=0.05, claim_wait=0, grace_seconds=1
    )
    table: dict[str, Any] = {"fl_train": executors[0]} if executors else {}
    runner = Runner(options, ACCOUNT, client, table)
    job = asyncio.create_task(runner.run())
    await until(lambda: server.registrations or job.done())
    return runner, job


async def stop(runner: Runner, job: asyncio.Task[None]) -> None:
    runner.stop()
    await asyncio.wait_for(job, 10)
    await runner.client.close()


async def test_registration_advertises_fl_and_the_local_dataset_names() -> None:
    server = Server()
    executor = FlExecutor(client_for(server), {"zeta": Path("z.npz"), "alpha": Path("a.csv")})
    runner, job = await start(server, executor)
    await stop(runner, job)
    caps = server.registrations[0]["capabilities"]
    assert caps["fl"] is True and caps["fl_datasets"] == ["alpha", "zeta"]


async def test_a_runner_without_the_fl_executor_does_not_advertise_fl() -> None:
    server = Server()
    runner, job = await start(server)
    await stop(runner, job)
    caps = server.registrations[0]["capabilities"]
    assert caps["fl"] is False and "fl_datasets" not in caps


@pytest.fixture
def blocked_training(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Training that waits (in its worker thread) until the event is set."""
    gate = threading.Event()

    def slow(*args: Any) -> Any:
        gate.wait(10)
        return train_local(*args)

    monkeypatch.setattr(executor_module, "train_local", slow)
    yield gate
    gate.set()


async def test_heartbeats_renew_the_claim_while_training_runs_and_the_server_completes_it(
    blocked_training: threading.Event,
) -> None:
    server = Server([{"task": fl_task(fl_config()), "claim_token": TOKEN}])
    runner, job = await start(server, FlExecutor(client_for(server)))
    try:
        await until(lambda: any(b.get("claims") == [TOKEN] for b in server.beats))
        seen = len(server.beats)
        await until(lambda: len(server.beats) >= seen + 3)  # the loop is not blocked
        assert server.updates == []
        blocked_training.set()
        await until(lambda: runner.completed == 1)
    finally:
        await stop(runner, job)
    assert len(server.updates) == 1
    assert server.reports == []  # the accepted update completed the task: nothing more is sent


async def test_a_claim_revoked_during_training_posts_no_update(
    blocked_training: threading.Event,
) -> None:
    server = Server([{"task": fl_task(fl_config()), "claim_token": TOKEN}])
    runner, job = await start(server, FlExecutor(client_for(server)))
    try:
        await until(lambda: any(b.get("claims") == [TOKEN] for b in server.beats))
        server.revoke = True
        await until(lambda: not runner.active)
    finally:
        blocked_training.set()
        await stop(runner, job)
    assert server.updates == [] and server.reports == []


def test_dataset_flags_win_over_the_environment_which_is_comma_separated(tmp_path: Path) -> None:
    for name in ("a.csv", "b.npz", "c.json"):
        (tmp_path / name).write_text("x")
    env = f"a={tmp_path}/a.csv, b={tmp_path}/b.npz,,"
    assert parse_dataset_specs([], env) == {"a": tmp_path / "a.csv", "b": tmp_path / "b.npz"}
    assert parse_dataset_specs([f"c={tmp_path}/c.json"], env) == {"c": tmp_path / "c.json"}
    assert runner_cli.fl_config(True, [], {"PARITY_FL_DATASETS": env}) == {
        "a": tmp_path / "a.csv", "b": tmp_path / "b.npz",
    }  # fmt: skip
    assert runner_cli.fl_config(False, [], {"PARITY_FL_DATASETS": env}) is None


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["digits"], "is not NAME=PATH"),
        (["=x.csv"], "is not NAME=PATH"),
        (["d=missing.csv"], "no such file"),
        (["d=data.txt"], "is not a .csv, .npz or .json file"),
        (["d=ok.csv", "d=ok.csv"], "named twice"),
    ],
)
def test_a_bad_dataset_spec_is_refused_naming_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, specs: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.csv").write_text("x")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(typer.BadParameter, match="--fl-dataset") as caught:
        runner_cli.fl_config(True, specs, {})
    assert message in str(caught.value)


def test_no_fl_with_a_dataset_is_a_usage_error_before_anything_is_asked(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    result = CliRunner().invoke(
        runner_cli.app,
        ["--server", "http://127.0.0.1:9", "--keystore", str(tmp_path / "missing.json"),
         "--no-fl", "--fl-dataset", f"d={tmp_path}/d.csv"],
        env={"PARITY_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--fl-dataset needs FL" in result.output


class EndlessTraining:
    """A stand-in for ``train_local`` that trains until its ``stop`` (the last argument) says
    so: ``running`` once it started, ``stopped`` once it was asked to stop (or the test gave
    up: set ``stopped`` to end the thread)."""

    def __init__(self) -> None:
        self.running, self.stopped = threading.Event(), threading.Event()

    def __call__(self, *args: Any) -> Any:
        should_stop = args[-1]
        self.running.set()
        while not should_stop():
            if self.stopped.wait(0.01):  # the test gave up: end the thread
                raise AssertionError("never asked to stop")
        self.stopped.set()
        raise TrainingStopped("stopped")


async def test_a_cancelled_task_stops_its_training_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker thread cannot be interrupted: without the stop signal a cancelled task's
    training ran on for its remaining epochs, burning the CPU for nobody and holding up the
    runner's exit (asyncio waits for its worker threads) until it was done."""
    training = EndlessTraining()
    monkeypatch.setattr(executor_module, "train_local", training)
    running, stopped = training.running, training.stopped
    client = client_for(Server())
    executor = FlExecutor(client)
    executor.claim_token_of = lambda task_id: TOKEN
    cancel = CancelToken()

    async def logs(new: list[str]) -> None:
        pass

    run = asyncio.ensure_future(executor.run(fl_task(fl_config()), logs, cancel))
    try:
        await until(running.is_set)
        cancel.cancel("cancelled by the client")
        outcome = await asyncio.wait_for(run, 10)
        assert outcome.cancelled and not outcome.ok
        await until(stopped.is_set)
    finally:
        stopped.set()
        await client.close()
