"""The runner's side of a SecAgg+ round (``parity.agent.fl.secagg``) against a scripted
server whose other participants are the FL core's SecAgg+ clients: the runner advertises its
keys and shares its secrets while it trains, one request per stage (each post's reply carries
the next messages; the stage's long-poll when a reply is not ready in time), posts a masked
vector (never its update) with its figures, answers the unmask request, and the server's core
unmasking then gives the example-weighted mean of all three updates. Under central DP
(``privacy: {"mode": "central", "l2_norm_clip": C}``) what the runner contributes to the sum is
its delta clipped to C with a weight factor of 1. A round that goes on without the runner, a
malformed ``secure_aggregation`` or ``privacy`` config, and a cancel end the task with the
reason."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from parity.agent.executors import CancelToken, Outcome
from parity.agent.fl import FlExecutor
from parity.agent.fl import executor as executor_module
from parity.core.fl.aggregation import fedavg
from parity.core.fl.dp import clip_update, joint_l2_norm, model_delta
from parity.core.fl.quantize import (
    decode_sum,
    dequantize_sum,
    encode_update,
    flatten,
    layout_of,
    quantization_step,
)
from parity.core.fl.secagg import (
    KeyAdvert,
    MaskedInput,
    ShareMessage,
    UnmaskReply,
    plan_round,
    round_context,
)
from parity.core.fl.secagg_client import SecAggClient
from parity.core.fl.secagg_config import SecAggConfig
from parity.core.fl.secagg_server import route_shares, sum_masked, unmask_request, unmask_sum
from tests.conftest import until
from tests.unit.test_agent_fl import (
    GLOBAL,
    TOKEN,
    EndlessTraining,
    Server,
    X,
    Y,
    client_for,
    expected,
    fl_task,
)
from tests.unit.test_agent_fl import fl_config as plain_config

CONFIG = SecAggConfig(
    num_shares=3,
    reconstruction_threshold=2,
    clipping_range=8.0,
    quantization_range=2**20,
    stage_timeout_seconds=30.0,
    max_weight=100.0,
)
SEED = bytes(range(32))
IDS = ["0", "1", "2"]
LAYOUT = sorted(layout_of(GLOBAL))
SIZE = sum(math.prod(shape) for _, shape in LAYOUT) + 1
NEXT = {"advertise_keys": "advertise_keys", "share_keys": "share_keys", "masked_input": "unmask"}


def secure_config(**over: Any) -> dict[str, Any]:
    secure = {
        "mode": "secagg_plus",
        "num_shares": CONFIG.num_shares,
        "reconstruction_threshold": CONFIG.reconstruction_threshold,
        "clipping_range": CONFIG.clipping_range,
        "quantization_range": CONFIG.quantization_range,
        "modulus_range": CONFIG.modulus_range,
        "max_weight": CONFIG.max_weight,
        "stage_timeout_seconds": CONFIG.stage_timeout_seconds,
        "participants": [0, 1, 2],
        "graph_seed": SEED.hex(),
    }
    secure.update(over)
    return plain_config(num_participants=3, secure_aggregation=secure)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class SecAggServer(Server):
    """The scripted runner API plus one SecAgg+ round's stage endpoints. Participant 0 is the
    runner under test; 1 and 2 are core clients with known updates. A post with ``wait``
    answers with ``reply``: the messages that come next, ready (``reply_ready``) or not yet;
    each stage's long-poll answers ``ready: false`` once before its messages."""

    def __init__(self) -> None:
        super().__init__()
        self.setups = plan_round(IDS, CONFIG, SEED, round_context("s-1", 1), SIZE)
        self.peers = {u: SecAggClient(self.setups[u]) for u in IDS[1:]}
        rng = np.random.default_rng(5)
        self.updates_of = {
            u: (
                {n: rng.normal(0, 0.05, np.shape(a)) for n, a in GLOBAL.items()},
                int(rng.integers(20, 90)),
            )
            for u in self.peers
        }
        self.adverts = {u: c.advertise() for u, c in self.peers.items()}
        self.shares: dict[str, ShareMessage] = {}
        self.inputs: dict[str, MaskedInput] = {}
        self.levels: dict[str, np.ndarray] = {}  # the peers' quantized updates
        self.replies: list[UnmaskReply] = []
        self.bundles: dict[str, dict[str, bytes]] = {}
        self.stage_calls: list[tuple[str, str]] = []
        self.polled: set[str] = set()
        self.masked_body: dict[str, Any] = {}
        self.refuse: dict[str, tuple[int, dict[str, Any]]] = {}
        self.total: np.ndarray | None = None
        self.on_poll: Callable[[str], None] = lambda stage: None
        self.hold: set[str] = set()  # stages that never close
        self.reply_ready = True  # a post's reply carries the next messages
        self.reply_error: dict[str, Any] | None = None  # ... or the wait's refusal

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if "/secagg/" not in path:
            return await super().__call__(request)
        assert path.startswith("/api/v1/federated-learning/sessions/s-1/rounds/1/secagg/")
        stage = path.rsplit("/", 1)[-1]
        self.stage_calls.append((request.method, stage))
        if (request.method, stage) in self.refuse:
            status, body = self.refuse[(request.method, stage)]
            return httpx.Response(status, json=body)
        if request.method == "GET":
            assert request.headers["x-claim-token"] == TOKEN
            assert float(request.url.params["wait"]) > 0
            if stage not in self.polled or stage in self.hold:  # still open the first time
                self.polled.add(stage)
                self.on_poll(stage)
                return httpx.Response(200, json={"ready": False, "messages": []})
            return httpx.Response(200, json={"ready": True, "messages": self.relay(stage)})
        body = json.loads(request.content)
        assert body.pop("claim_token") == TOKEN
        self.accept(stage, body)
        answer: dict[str, Any] = {"message": f"{stage} message accepted"}
        if "wait" in request.url.params and stage != "unmask":
            assert float(request.url.params["wait"]) > 0
            after = NEXT[stage]
            ready = self.reply_ready and after not in self.hold and self.reply_error is None
            answer["reply"] = {
                "stage": after,
                "ready": ready,
                "messages": self.relay(after) if ready else [],
            }
            if self.reply_error is not None and stage == "masked_input":
                answer["reply"]["error"] = self.reply_error
        return httpx.Response(200, json=answer)

    def relay(self, stage: str) -> list[dict[str, Any]]:
        if stage == "advertise_keys":
            return [
                {"sender": int(u), "c_public": b64(a.c_public), "s_public": b64(a.s_public)}
                for u, a in self.adverts.items()
                if u != "0"
            ]
        if stage == "share_keys":
            return [{"sender": int(u), "sealed": b64(s)} for u, s in self.bundles["0"].items()]
        assert stage == "unmask"
        request = unmask_request(self.setups, self.shares, self.inputs)
        self.request = request
        return [{"sender": None, "survivors": [int(u) for u in request.survivors], "dropped": []}]

    def accept(self, stage: str, body: dict[str, Any]) -> None:
        if stage == "advertise_keys":
            self.adverts["0"] = KeyAdvert("0", unb64(body["c_public"]), unb64(body["s_public"]))
            return
        if stage == "share_keys":
            sealed = {u: unb64(s) for u, s in body["shares"].items()}
            self.shares["0"] = ShareMessage("0", unb64(body["commitment"]), sealed)
            for u, peer in self.peers.items():
                seen = {v: a for v, a in self.adverts.items() if v != u}
                self.shares[u] = peer.share_keys(seen)
            self.bundles, self.commitments = route_shares(
                self.setups, self.adverts, self.shares.values()
            )
            return
        if stage == "masked_input":
            self.masked_body = body
            vector = np.frombuffer(unb64(body["vector"]), "<u8").astype(np.uint64)
            self.inputs["0"] = MaskedInput("0", vector)
            rng = np.random.default_rng(9)
            for u, peer in self.peers.items():
                delta, n = self.updates_of[u]
                self.levels[u] = encode_update(delta, n, CONFIG, LAYOUT, rng)
                self.inputs[u] = peer.masked_input(self.bundles[u], self.levels[u])
            return
        assert stage == "unmask"
        self.replies.append(
            UnmaskReply(
                "0",
                {o: unb64(s) for o, s in body["self_mask_shares"].items()},
                {o: unb64(s) for o, s in body["key_shares"].items()},
            )
        )
        self.replies += [peer.unmask(self.request) for peer in self.peers.values()]
        masked_sum, _ = sum_masked(self.setups, self.commitments, self.inputs.values())
        result = unmask_sum(
            self.setups, self.adverts, self.commitments, masked_sum, self.request, self.replies
        )
        self.total = result.total


async def execute(
    server: Server, config: dict[str, Any], cancel: CancelToken | None = None
) -> Outcome:
    client = client_for(server)
    executor = FlExecutor(client)
    executor.claim_token_of = lambda task_id: TOKEN

    async def logs(lines: list[str]) -> None:
        return None

    try:
        return await executor.run(fl_task(config), logs, cancel or CancelToken())
    finally:
        await client.close()


async def test_the_runner_takes_part_in_a_secagg_round_and_its_update_counts_in_the_mean() -> None:
    server = SecAggServer()
    outcome = await execute(server, secure_config())
    assert outcome.ok and outcome.reported, outcome.error
    assert server.updates == [] and server.uploads == []  # no plain update, no model file
    # One request per stage: each post's reply carried the messages that come next.
    assert server.stage_calls == [
        ("POST", "advertise_keys"),
        ("POST", "share_keys"),
        ("POST", "masked_input"),
        ("POST", "unmask"),
    ]
    body = server.masked_body
    assert body["data_size"] == len(Y) and np.isfinite(body["loss"])
    assert 0.0 <= body["accuracy"] <= 1.0 and body["training_time_ms"] >= 0
    assert outcome.usage["data_size"] == len(Y)
    # What the server unmasks is the example-weighted mean of the three deltas.
    assert server.total is not None
    mean = decode_sum(server.total, 3, CONFIG, LAYOUT)
    mine = {n: np.asarray(w, np.float64) - GLOBAL[n] for n, w in expected(X, Y).items()}
    plain = fedavg([(mine, len(Y)), *server.updates_of.values()])
    step = quantization_step(CONFIG.clipping_range, CONFIG.quantization_range)
    weights = sum(
        min(n, CONFIG.max_weight) / CONFIG.max_weight
        for _, n in [(0, len(Y)), *server.updates_of.values()]
    )
    largest = max(float(np.max(np.abs(d))) for d in mine.values())
    bound = 3 * step * (1 + largest) / weights + 1e-6
    assert bound < 1e-3
    for name, want in plain.items():
        assert np.max(np.abs(mean[name] - want)) < bound, name
    # The vector the runner posted is masked: it is not its quantized update.
    posted = np.frombuffer(unb64(body["vector"]), "<u8")
    assert posted.shape == (SIZE,)
    levels = encode_update(mine, len(Y), CONFIG, LAYOUT, np.random.default_rng(0))
    assert np.mean(np.abs(posted.astype(np.float64) - levels.astype(np.float64))) > 1e6


async def test_a_reply_not_ready_in_time_is_long_polled_until_it_is() -> None:
    server = SecAggServer()
    server.reply_ready = False  # every post's wait runs out before the stage closes
    outcome = await execute(server, secure_config())
    assert outcome.ok and outcome.reported, outcome.error
    assert server.total is not None
    # Each stage's messages were then long-polled until ready.
    assert [s for m, s in server.stage_calls if m == "GET"] == [
        "advertise_keys",
        "advertise_keys",
        "share_keys",
        "share_keys",
        "unmask",
        "unmask",
    ]


async def test_under_central_dp_the_runner_clips_its_delta_to_c_before_it_is_masked() -> None:
    clip = 0.05
    mine = model_delta(expected(X, Y), GLOBAL)
    assert joint_l2_norm(mine) > 4 * clip  # so clipping does something
    server = SecAggServer()
    config = {**secure_config(), "privacy": {"mode": "central", "l2_norm_clip": clip}}
    outcome = await execute(server, config)
    assert outcome.ok, outcome.error
    assert server.masked_body["data_size"] == len(Y)  # the figures stay as they are
    # The runner's quantized update is the unmasked sum less the peers' (mod the modulus).
    assert server.total is not None
    levels = server.total.astype(np.uint64)
    for peer in server.levels.values():
        levels = levels - peer.astype(np.uint64)
    levels &= np.uint64(CONFIG.modulus_range - 1)
    contributed = dequantize_sum(levels, 1, CONFIG.clipping_range, CONFIG.quantization_range)
    step = quantization_step(CONFIG.clipping_range, CONFIG.quantization_range)
    weight, vector = contributed[-1], contributed[:-1]
    # Weighed fully (weight factor 1, not len(Y) / max_weight), and clipped to C: its norm
    # is at most C plus the rounding (under one step per value) ...
    assert len(Y) < CONFIG.max_weight and abs(weight - 1.0) < step
    assert np.linalg.norm(vector) <= clip + step * math.sqrt(vector.size)
    # ... and it is the trained delta scaled down to C, direction kept.
    want = flatten(clip_update(mine, clip).delta, LAYOUT)
    assert np.max(np.abs(vector - want)) < step + 1e-6


@pytest.mark.parametrize(
    ("privacy", "secure", "named"),
    [
        ({"mode": "central", "l2_norm_clip": 0.1}, False, "privacy"),
        (
            {"mode": "central", "l2_norm_clip": 0.1, "noise_multiplier": 1.0},
            True,
            "privacy.noise_multiplier",
        ),
        ({"mode": "central"}, True, "privacy.l2_norm_clip"),
    ],
)
async def test_a_central_clip_the_runner_cannot_apply_fails_the_task_naming_it(
    privacy: dict[str, Any], secure: bool, named: str
) -> None:
    server = SecAggServer()
    config = secure_config() if secure else plain_config()
    outcome = await execute(server, {**config, "privacy": privacy})
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.startswith(f"invalid fl_train config: {named}"), outcome.error
    assert server.stage_calls == [] and server.updates == []


@pytest.mark.parametrize("heard", ["reply", "long-poll"])
async def test_a_round_that_goes_on_without_the_runner_fails_its_task_with_the_reason(
    heard: str,
) -> None:
    server = SecAggServer()
    reason = "round 1: secure aggregation: 1 of 3 participants sent a masked input"
    error = {"code": "round_closed", "message": reason, "details": {"round": 1}}
    if heard == "reply":  # the masked input's post was accepted, its wait refused
        server.reply_error = error
    else:
        server.reply_ready = False
        server.refuse[("GET", "unmask")] = (409, {"error": error})
    outcome = await execute(server, secure_config())
    assert not outcome.ok and outcome.error is not None
    assert reason in outcome.error and "went on without this participant" in outcome.error
    assert ("POST", "unmask") not in server.stage_calls


async def test_a_refused_stage_message_fails_the_task_with_the_servers_words() -> None:
    server = SecAggServer()
    server.refuse[("POST", "share_keys")] = (
        422,
        {"error": {"code": "secagg_refused", "message": "shares: not a neighbour", "details": {}}},
    )
    outcome = await execute(server, secure_config())
    assert not outcome.ok and outcome.error is not None
    assert "secagg_refused" in outcome.error and "not a neighbour" in outcome.error
    assert ("POST", "masked_input") not in server.stage_calls


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"graph_seed": "xyz"}, "secure_aggregation.graph_seed"),
        ({"participants": []}, "secure_aggregation.participants"),
        ({"num_shares": 4}, "secure_aggregation.num_shares"),
        ({"reconstruction_threshold": None}, "secure_aggregation.reconstruction_threshold"),
    ],
)
async def test_a_malformed_secure_aggregation_config_fails_before_anything_is_sent(
    change: dict[str, Any], named: str
) -> None:
    server = SecAggServer()
    outcome = await execute(server, secure_config(**change))
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.startswith(f"invalid fl_train config: {named}")
    assert server.stage_calls == [] and server.updates == []


async def test_a_runner_outside_the_rounds_plan_refuses_to_take_part() -> None:
    server = SecAggServer()
    outcome = await execute(server, secure_config(participants=[1, 2, 3]))
    assert not outcome.ok and outcome.error is not None
    assert "not in the round's plan" in outcome.error
    assert server.stage_calls == []


async def test_a_cancel_during_the_key_stages_ends_the_task_as_cancelled() -> None:
    server = SecAggServer()
    cancel = CancelToken()
    server.hold.add("advertise_keys")  # the other participants never advertise
    server.on_poll = lambda stage: cancel.cancel("cancelled by the client")
    outcome = await execute(server, secure_config(), cancel)
    assert outcome.cancelled and not outcome.ok
    assert outcome.error == "cancelled by the client"
    assert ("POST", "share_keys") not in server.stage_calls


async def test_a_cancel_during_the_key_stages_stops_the_training_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The training of a cancelled SecAgg+ round ran on to its last epoch for nobody."""
    training = EndlessTraining()
    monkeypatch.setattr(executor_module, "train_local", training)
    asked_to_stop, running = training.stopped, training.running
    server = SecAggServer()
    cancel = CancelToken()
    server.hold.add("advertise_keys")
    # The cancel comes once the training thread runs (the fake server's handler may block).
    server.on_poll = lambda stage: running.wait(10) and cancel.cancel("cancelled by the client")
    try:
        outcome = await execute(server, secure_config(), cancel)
        assert outcome.cancelled and running.is_set()
        await until(asked_to_stop.is_set)
    finally:
        asked_to_stop.set()
