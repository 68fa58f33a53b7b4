"""`parity-server llm models` and `parity-server llm prompt` (waiting, and --stream through the
gateway) against a real server process, with the test playing the runner over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
from typer.testing import Result

from tests.e2e.procs import ServerProcess
from tests.integration.cli_support import cli_env, cli_for, register_runner
from tests.integration.cli_support import server_fixture as server_fixture  # the `server` fixture


def _serve_one(url: str, runner_token: str, answer: str, done: dict[str, Any]) -> None:
    """Claim the next task (long-poll) and complete it with ``answer``."""
    headers = {"Authorization": f"Bearer {runner_token}"}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
        got = http.post("/api/v1/runners/tasks/claim", params={"wait": 20})
        done["claim"] = got.status_code
        if got.status_code != 200:
            return
        claim = got.json()
        r = http.post(
            f"/api/v1/runners/tasks/{claim['task']['id']}/complete",
            json={
                "claim_token": claim["claim_token"],
                "output": answer,
                "usage": {"input_tokens": 5, "output_tokens": 3},
            },
        )
        done["complete"] = r.status_code


def test_models_and_a_prompt_from_the_command_line(server: ServerProcess) -> None:
    env = cli_env(server)
    token = env["PARITY_TOKEN"]
    model = {
        "model_name": "tiny",
        "is_loaded": True,
        "max_tokens": 512,
        "context_length": 2048,
        "price_per_1k_input": "3",
        "price_per_1k_output": "7",
    }
    runner_token = register_runner(server.url, token, device_id="cli-llm-runner", models=[model])
    cli = cli_for("llm", env)

    models = cli("models")
    assert models.exit_code == 0, models.output
    header, row = models.stdout.splitlines()
    assert header.split() == ["MODEL", "LOADED", "RUNNERS", "IN/1K", "OUT/1K", "CONTEXT"]
    assert row.split() == ["tiny", "yes", "1/1", "3", "7", "2048"]

    done: dict[str, Any] = {}
    serving = threading.Thread(
        target=_serve_one, args=(server.url, runner_token, "Hello from a runner", done)
    )
    serving.start()
    try:
        answer = cli("prompt", "--model", "tiny", "--max-tokens", "16", "--wait", "25", "Hi")
    finally:
        serving.join(timeout=40)
    assert done == {"claim": 200, "complete": 200}
    assert answer.exit_code == 0, answer.output
    assert answer.stdout == "Hello from a runner\n"
    assert "5 input + 3 output tokens" in answer.stderr

    # Waiting for a model no runner serves would wait out --wait (30 s), then exit 0 "queued".
    unserved = cli("prompt", "--model", "nobody-serves-it", "--wait", "25", "Hi")
    assert unserved.exit_code == 1
    assert "no online runner serves model 'nobody-serves-it' (loaded now: tiny)" in unserved.stderr
    assert "--wait 0" in unserved.stderr
    queued = cli("prompt", "--model", "nobody-serves-it", "--wait", "0", "Hi")
    assert queued.exit_code == 0, queued.output
    assert "is queued" in queued.stderr
    prompt_id = queued.stdout.strip()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get(
            f"/api/v1/llm/prompts/{prompt_id}", headers={"Authorization": f"Bearer {token}"}
        )
        assert (r.status_code, r.json()["status"]) == (200, "queued")

    refused = cli("prompt", "--model", "x" * 300, "--wait", "0", "Hi")
    assert refused.exit_code == 1
    assert "model" in refused.stderr and "invalid_input" in refused.stderr


def _serve_streaming(
    url: str, runner_token: str, deltas: list[str], done: dict[str, Any], *, fail: bool = False
) -> None:
    """Claim the next task, stream ``deltas`` on its streaming leg, then complete it with their
    text (or, with ``fail``, fail it after them)."""
    headers = {"Authorization": f"Bearer {runner_token}"}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
        got = http.post("/api/v1/runners/tasks/claim", params={"wait": 20})
        done["claim"] = got.status_code
        if got.status_code != 200:
            return
        claim = got.json()
        task_id, claim_token = claim["task"]["id"], claim["claim_token"]
        done["stream"] = claim["task"]["config"].get("stream")

        def lines() -> Iterator[bytes]:
            for d in deltas:
                yield (json.dumps({"delta": d}) + "\n").encode()

        r = http.post(
            f"/api/v1/runners/tasks/{task_id}/stream",
            content=lines(),
            headers={"X-Claim-Token": claim_token},
        )
        done["deltas"] = r.json().get("deltas")
        text = "".join(deltas)
        usage = {"input_tokens": 5, "output_tokens": len(deltas)}
        action = "fail" if fail else "complete"
        body: dict[str, Any] = {"claim_token": claim_token, "output": text, "usage": usage}
        if fail:
            body["error"] = "backend died"
        done[action] = http.post(f"/api/v1/runners/tasks/{task_id}/{action}", json=body).status_code


def test_a_prompt_streamed_from_the_command_line(server: ServerProcess) -> None:
    env = cli_env(server)
    model = {"model_name": "tiny", "is_loaded": True, "max_tokens": 512}
    runner_token = register_runner(
        server.url, env["PARITY_TOKEN"], device_id="cli-llm-stream-runner", models=[model]
    )
    cli = cli_for("llm", env)

    def streamed(deltas: list[str], *, fail: bool = False) -> tuple[Result, dict[str, Any]]:
        done: dict[str, Any] = {}
        serving = threading.Thread(
            target=_serve_streaming,
            args=(server.url, runner_token, deltas, done),
            kwargs={"fail": fail},
        )
        serving.start()
        try:
            result = cli("prompt", "--model", "tiny", "--stream", "Hi")
        finally:
            serving.join(timeout=40)
        return result, done

    answer, done = streamed(["Hel", "lo", " there"])
    assert done == {"claim": 200, "stream": True, "deltas": 3, "complete": 200}
    assert answer.exit_code == 0, answer.output
    assert answer.stdout == "Hello there\n"
    # The cost, as without --stream: the gateway's stream carries the usage, the record the cost.
    assert "5 input + 3 output tokens, cost 0 base units" in answer.stderr, answer.stderr

    broken, done = streamed(["Par"], fail=True)
    assert done["fail"] == 200
    assert broken.exit_code == 1
    assert broken.stdout == "Par\n"  # what was delivered, then the error
    assert "error:" in broken.stderr and "prompt_failed" in broken.stderr

    unknown = cli("prompt", "--model", "nobody-serves-it", "--stream", "Hi")
    assert unknown.exit_code == 1
    assert "model_not_found" in unknown.stderr

    both = cli("prompt", "--model", "tiny", "--stream", "--json", "Hi")
    assert both.exit_code == 2 and "cannot be combined" in both.stderr
