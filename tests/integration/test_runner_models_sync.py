"""Runners repeat their model list in every heartbeat; the server writes model rows only when
the list or a model's attributes changed (compared with the stored rows)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from parity.container import Container
from tests.conftest import BOB, bearer, sign_in
from tests.integration.queue_helpers import heartbeat
from tests.integration.test_llm_api import llm_runner, model

V1 = "/api/v1"
WRITE = re.compile(r"^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?runner_models\b", re.I)


@pytest.fixture
def model_writes(container: Container) -> Iterator[list[str]]:
    """Every INSERT, UPDATE or DELETE statement on runner_models the server sends."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if WRITE.match(statement):
            seen.append(statement)

    engine = container.db.write_engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


async def listed(http: httpx.AsyncClient, token: str, runner_id: str) -> dict[str, Any]:
    r = await http.get(f"{V1}/runners/{runner_id}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return {m["model_name"]: (m["is_loaded"], m["max_tokens"]) for m in r.json()["models"]}


async def test_a_heartbeat_with_unchanged_models_writes_no_model_row(
    client: httpx.AsyncClient, model_writes: list[str]
):
    bob = await sign_in(client, BOB)
    models = [model("m1", price=(1, 2), context_length=8192), model("m2", loaded=False)]
    runner, _ = await llm_runner(client, bob, *models)
    assert model_writes  # registration stored them
    model_writes.clear()
    for report in (models, list(reversed(models)), [models[1], models[0], models[1]]):
        r = await heartbeat(client, runner, cpu_usage=0.1, models=report)
        assert r.status_code == 200, r.text
    r = await heartbeat(client, runner)  # no models key: the stored list stands
    assert r.status_code == 200, r.text
    assert model_writes == []


async def test_a_changed_model_list_is_applied_by_the_heartbeat(
    client: httpx.AsyncClient, model_writes: list[str]
):
    bob = await sign_in(client, BOB)
    runner, runner_id = await llm_runner(client, bob, model("m1", price=(1, 2)), model("m2"))
    model_writes.clear()
    # m1 unloaded, m2 gone, m3 new.
    report = [model("m1", loaded=False, price=(1, 2)), model("m3")]
    r = await heartbeat(client, runner, models=report)
    assert r.status_code == 200, r.text
    assert len(model_writes) == 3  # one delete, one update, one insert
    assert await listed(client, bob, runner_id) == {"m1": (False, 4096), "m3": (True, 4096)}

    model_writes.clear()  # only a detail changes: m3's price
    r = await heartbeat(client, runner, models=[report[0], model("m3", price=(5, 7))])
    assert r.status_code == 200, r.text
    assert len(model_writes) == 1
    r = await client.get(f"{V1}/llm/models", headers=bearer(bob))
    assert r.status_code == 200, r.text
    prices = {m["model_name"]: m["lowest_price_per_1k_output"] for m in r.json()["models"]}
    assert prices["m3"] == "7"

    model_writes.clear()
    r = await heartbeat(client, runner, models=[])  # serves nothing any more
    assert r.status_code == 200, r.text
    assert model_writes and await listed(client, bob, runner_id) == {}
