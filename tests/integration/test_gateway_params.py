"""Every OpenAI and Ollama parameter is honoured end to end or refused naming it, never silently
dropped: in process, on SQLite and PostgreSQL, with the official ``openai`` client where it
matters. A prompt's task is claimed through the runner API and run by the runner's real
executor on a fake backend that speaks the backend's wire format (tests/contract/llm_fakes.py),
so what the backend received is checked, then completed with what the executor produced.

- ``stop`` (OpenAI; Ollama's ``options.stop``), ``top_p`` and ``seed`` go gateway → prompt →
  task config → executor → the backend's request; an answer cut by a stop sequence finishes
  ``stop``;
- Ollama's ``system`` comes before the prompt as a system message; ``num_predict`` -1 and -2
  take the server's default limit (LLM_DEFAULT_MAX_TOKENS);
- parameters not honoured are refused (400, OpenAI's or Ollama's error shape, naming them)
  unless their value is the default;
- unknown routes under ``/v1`` and ``/ollama/api`` answer 404 in the client's own error shape;
  ``GET /v1/models/{id}``, ``/ollama/api/version`` and ``/ollama/api/ps`` answer."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import openai
import pytest

from parity import __version__
from parity.agent.executors import CancelToken
from parity.agent.llm import LlmExecutor, OllamaBackend, OpenAIBackend
from tests.conftest import ALICE, BOB, bearer, sign_in
from tests.contract.llm_fakes import MODEL, FakeLlm, serve
from tests.integration.queue_helpers import act
from tests.integration.test_gateway_api import api_key, claim_when_routed, sse_events
from tests.integration.test_llm_api import fields, llm_runner, model

V1 = "/api/v1"
DEFAULT_MAX_TOKENS = 512  # LLM_DEFAULT_MAX_TOKENS
MESSAGES = [{"role": "user", "content": "Tell me about the sea"}]
CHAT = {"model": MODEL, "messages": MESSAGES}


async def setup(client: httpx.AsyncClient) -> tuple[str, str]:
    """An API key of Alice and a runner token of Bob's runner serving the fakes' model."""
    key = await api_key(client, ALICE)
    bob = await sign_in(client, BOB)
    runner, _ = await llm_runner(client, bob, model(MODEL, context_length=2048))
    return key, runner


async def no_logs(lines: list[str]) -> None:
    return None


async def run_routed(
    client: httpx.AsyncClient, runner: str, kind: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Claim the prompt routed to ``runner``, run it with the runner's executor on a fake
    ``kind`` backend and complete it with the outcome. Returns the task's config and the body
    the backend received."""
    got = await claim_when_routed(client, runner)
    task = got["task"]
    async with serve(FakeLlm(kind)) as fake:
        backend = (OllamaBackend if kind == "ollama" else OpenAIBackend)(fake.base_url)
        executor = LlmExecutor([backend])
        outcome = await executor.run(task, no_logs, CancelToken())
        await executor.aclose()
    assert outcome.ok, outcome.error
    r = await act(client, runner, task["id"], "complete", got["claim_token"],
                  output=outcome.output, usage=outcome.usage)  # fmt: skip
    assert r.status_code == 200, r.text
    [(_, sent)] = fake.requests
    return task["config"], sent


async def answered(
    client: httpx.AsyncClient, runner: str, kind: str, path: str, key: str, body: dict[str, Any]
) -> tuple[httpx.Response, dict[str, Any], dict[str, Any]]:
    answer = asyncio.create_task(client.post(path, json=body, headers=bearer(key)))
    config, sent = await run_routed(client, runner, kind)
    r = await asyncio.wait_for(answer, 20)
    assert r.status_code == 200, r.text
    return r, config, sent


# -- stop, top_p, seed: end to end ---------------------------------------------------------------


async def test_openai_stop_top_p_and_seed_reach_the_backend_and_the_answer_finishes_stop(
    client: httpx.AsyncClient,
):
    key, runner = await setup(client)
    body = {**CHAT, "stop": [" and", "never"], "top_p": 0.5, "seed": 7, "max_tokens": 50}
    r, config, sent = await answered(client, runner, "openai", "/v1/chat/completions", key, body)
    assert (config["stop"], config["top_p"], config["seed"]) == ([" and", "never"], 0.5, 7)
    assert (sent["stop"], sent["top_p"], sent["seed"]) == ([" and", "never"], 0.5, 7)
    [choice] = r.json()["choices"]
    assert choice["message"]["content"] == "The sea is wide"
    assert choice["finish_reason"] == "stop"

    # A string, streamed, on the legacy completions, to an Ollama backend (options.stop).
    body = {"model": MODEL, "prompt": "Once", "stop": " deep", "stream": True}
    r, config, sent = await answered(client, runner, "ollama", "/v1/completions", key, body)
    assert config["stop"] == [" deep"] and sent["options"]["stop"] == [" deep"]
    events = sse_events(r.text)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "The sea is wide and"
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]][-1] == "stop"

    # Without stop the same answer runs to its length limit.
    r, config, sent = await answered(
        client, runner, "openai", "/v1/chat/completions", key, {**CHAT, "max_tokens": 3}
    )
    assert "stop" not in config and "stop" not in sent
    assert r.json()["choices"][0]["finish_reason"] == "length"


async def test_a_messages_participant_name_reaches_an_openai_backend(client: httpx.AsyncClient):
    key, runner = await setup(client)
    messages = [{"role": "user", "content": "Tell me about the sea", "name": "alice_1"}]
    body = {"model": MODEL, "messages": messages, "stream": False}
    r, config, sent = await answered(client, runner, "openai", "/v1/chat/completions", key, body)
    assert r.status_code == 200, r.text
    assert config["messages"] == messages and sent["messages"] == messages
    r = await client.post(
        "/v1/chat/completions",
        json={**body, "messages": [{**messages[0], "name": "n" * 65}]},
        headers=bearer(key),
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].name", r.text


async def test_every_gateway_answer_names_its_prompt(client: httpx.AsyncClient):
    """The completion id is the prompt's (``chatcmpl-<hex>``) and the answer's
    ``X-Parity-Prompt-Id`` header names it: its record (cost, attempts) is one GET away."""
    key, runner = await setup(client)
    cases = [
        ("/v1/chat/completions", {**CHAT, "stream": False}, "chatcmpl-"),
        ("/v1/chat/completions", {**CHAT, "stream": True}, "chatcmpl-"),
        ("/v1/completions", {"model": MODEL, "prompt": "Once", "stream": True}, "cmpl-"),
        ("/ollama/api/chat", {**CHAT, "stream": False}, None),
        ("/ollama/api/generate", {"model": MODEL, "prompt": "Once"}, None),
    ]
    for path, body, prefix in cases:
        r, _, _ = await answered(client, runner, "openai", path, key, body)
        prompt_id = uuid.UUID(r.headers["X-Parity-Prompt-Id"])
        if prefix is not None:
            ids = (
                {e["id"] for e in sse_events(r.text)[:-1]}
                if body.get("stream")
                else {r.json()["id"]}
            )
            assert ids == {prefix + prompt_id.hex}, (path, ids)
        p = await client.get(f"{V1}/llm/prompts/{prompt_id}", headers=bearer(key))
        assert p.status_code == 200 and p.json()["status"] == "completed", (path, p.text)


async def test_the_prompts_api_carries_stop_into_the_task_config(client: httpx.AsyncClient):
    key, runner = await setup(client)
    body = {"model_name": MODEL, "prompt": "Once", "stop": "\n\n", "seed": 1}
    r = await client.post(f"{V1}/llm/prompts", json=body, headers=bearer(key))
    assert r.status_code == 202, r.text
    assert (r.json()["request"]["stop"], r.json()["request"]["seed"]) == (["\n\n"], 1)
    got = await claim_when_routed(client, runner)
    assert got["task"]["config"]["stop"] == ["\n\n"]
    for stop in (["a"] * 5, [""], "x" * 257, [1]):
        r = await client.post(f"{V1}/llm/prompts", json={**body, "stop": stop}, headers=bearer(key))
        assert fields(r) == {"stop"}, (stop, r.text)


async def test_ollama_system_stop_and_no_limit_reach_the_backend(client: httpx.AsyncClient):
    key, runner = await setup(client)
    system = "You answer in one short sentence about water"
    body = {
        "model": MODEL,
        "prompt": "Tell me about the sea",
        "system": system,
        "stream": False,
        "keep_alive": "5m",
        "format": "",
        "options": {"num_predict": -1, "stop": [" is"], "temperature": 0.2, "top_p": 0.9,
                    "seed": 3, "num_ctx": 4096, "num_thread": 2, "top_k": None},
    }  # fmt: skip
    r, config, sent = await answered(client, runner, "ollama", "/ollama/api/generate", key, body)
    # generate with a system text: a chat of the system message and the prompt.
    assert config["messages"] == [
        {"role": "system", "content": system},
        {"role": "user", "content": "Tell me about the sea"},
    ]
    assert config["max_tokens"] == DEFAULT_MAX_TOKENS  # -1: no limit of the client's own
    assert sent["messages"][0] == {"role": "system", "content": system}
    options = sent["options"]
    assert (options["stop"], options["top_p"], options["seed"]) == ([" is"], 0.9, 3)
    assert options["temperature"] == 0.2 and options["num_predict"] == DEFAULT_MAX_TOKENS
    one = r.json()
    assert (one["response"], one["done_reason"]) == ("The sea", "stop")
    # The fake counts the words of every message: the system text reached the model.
    assert one["prompt_eval_count"] == len(system.split()) + 5

    # chat: a top-level system goes first; -2 (fill the context) is no limit either.
    body = {"model": MODEL, "messages": MESSAGES, "system": system, "stream": False,
            "options": {"num_predict": -2}}  # fmt: skip
    r, config, sent = await answered(client, runner, "openai", "/ollama/api/chat", key, body)
    assert config["messages"] == [{"role": "system", "content": system}, *MESSAGES]
    assert config["max_tokens"] == DEFAULT_MAX_TOKENS
    assert r.json()["message"]["content"] == "The sea is wide and deep."


# -- refusals -----------------------------------------------------------------------------------


async def test_openai_parameters_not_honoured_are_refused_naming_them(client: httpx.AsyncClient):
    key, _ = await setup(client)
    chat_cases: list[tuple[dict[str, Any], str]] = [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_completion_tokens": -5, "max_tokens": 20}, "max_completion_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop[0]"),
        ({"stop": "x" * 257}, "stop"),
        ({"stop": 5}, "stop"),
        ({"top_p": 2}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]},
         "messages[0].tool_calls"),
    ]  # fmt: skip
    completion_cases: list[tuple[dict[str, Any], str]] = [
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"logprobs": 2}, "logprobs"),
        ({"logprobs": 0}, "logprobs"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2], [3]]}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"max_tokens": -1}, "max_tokens"),
    ]
    for path, base, cases in (
        ("/v1/chat/completions", CHAT, chat_cases),
        ("/v1/completions", {"model": MODEL, "prompt": "Once"}, completion_cases),
    ):
        for extra, param in cases:
            for stream in (False, True):
                body = {**base, **extra, "stream": stream}
                r = await client.post(path, json=body, headers=bearer(key))
                assert r.status_code == 400, (path, extra, r.text)
                err = r.json()["error"]
                assert (err["param"], err["type"]) == (param, "invalid_request_error"), r.text
                assert err["message"].startswith(f"{param}: "), r.text
    r = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": [1, 2, 3]}, headers=bearer(key)
    )
    assert "one string" in r.json()["error"]["message"]
    # stream_options only with a stream, as OpenAI answers.
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", {"model": MODEL})):
        body = {**base, "prompt": "Once", "stream_options": {"include_usage": True}}
        if path.endswith("chat/completions"):
            body.pop("prompt")
        r = await client.post(path, json=body, headers=bearer(key))
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options", r.text
    # Nothing refused was submitted.
    r = await client.get(f"{V1}/llm/prompts", headers=bearer(key))
    assert r.json()["total"] == 0, r.text


async def test_the_official_client_sees_a_bad_request_naming_the_param(
    client: httpx.AsyncClient,
):
    key, _ = await setup(client)
    oai = openai.AsyncOpenAI(base_url="http://parity.test/v1", api_key=key, http_client=client)
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], logprobs=True
        )
    assert caught.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.completions.create(model=MODEL, prompt=[1, 2, 3])
    assert caught.value.param == "prompt"


async def test_openai_parameters_at_their_defaults_are_accepted(client: httpx.AsyncClient):
    key, runner = await setup(client)
    defaults = {
        "n": 1, "logprobs": False, "top_logprobs": 0, "response_format": {"type": "text"},
        "tools": [], "tool_choice": "none", "functions": [], "function_call": "auto",
        "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0,
        "modalities": ["text"], "user": "u-1", "metadata": {"a": "b"}, "store": False,
        "parallel_tool_calls": True, "stop": None, "seed": None, "top_p": None,
        "reasoning_effort": None, "max_tokens": 20,
    }  # fmt: skip
    r, config, _ = await answered(
        client, runner, "openai", "/v1/chat/completions", key, {**CHAT, **defaults}
    )
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert config["max_tokens"] == 20 and "stop" not in config
    body = {"model": MODEL, "prompt": ["Once"], "echo": False, "suffix": "", "best_of": 1,
            "logprobs": None, "n": 1, "max_tokens": 20}  # fmt: skip
    r, config, _ = await answered(client, runner, "openai", "/v1/completions", key, body)
    assert config["prompt"] == "Once"
    assert r.json()["choices"][0]["text"] == "The sea is wide and deep."
    # max_completion_tokens is OpenAI's current name: it wins over max_tokens.
    body = {**CHAT, "max_completion_tokens": 2, "max_tokens": 40}
    r, config, _ = await answered(client, runner, "openai", "/v1/chat/completions", key, body)
    assert config["max_tokens"] == 2
    assert r.json()["choices"][0]["finish_reason"] == "length"


async def test_ollama_fields_and_options_not_honoured_are_refused_naming_them(
    client: httpx.AsyncClient,
):
    key, _ = await setup(client)
    generate = {"model": MODEL, "prompt": "Hi", "stream": False}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("generate", {"options": {"num_predict": 0}}, "options.num_predict"),
        ("generate", {"options": {"num_predict": -3}}, "options.num_predict"),
        ("generate", {"options": {"num_predict": "many"}}, "options.num_predict"),
        ("generate", {"options": {"top_k": 40}}, "options.top_k"),
        ("generate", {"options": {"repeat_penalty": 1.1}}, "options.repeat_penalty"),
        ("generate", {"options": {"mirostat": 1}}, "options.mirostat"),
        ("generate", {"options": {"stop": ["a"] * 5}}, "options.stop"),
        ("generate", {"options": {"stop": [""]}}, "options.stop[0]"),
        ("generate", {"options": {"temperature": 9}}, "options.temperature"),
        ("generate", {"options": {"top_p": -1}}, "options.top_p"),
        ("generate", {"options": {"seed": "x"}}, "options.seed"),
        ("generate", {"format": "json"}, "format"),
        ("generate", {"format": {"type": "object"}}, "format"),
        ("generate", {"images": ["aGk="]}, "images"),
        ("generate", {"suffix": "end"}, "suffix"),
        ("generate", {"template": "{{ .Prompt }}"}, "template"),
        ("generate", {"raw": True}, "raw"),
        ("generate", {"context": [1, 2]}, "context"),
        ("generate", {"think": True}, "think"),
        ("generate", {"unheard_of": 1}, "unheard_of"),
        ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("chat", {"format": "json"}, "format"),
        ("chat", {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
         "messages[0].images"),
    ]  # fmt: skip
    for route, extra, name in cases:
        base = generate if route == "generate" else {**generate, "messages": MESSAGES}
        if route == "chat":
            base = {k: v for k, v in base.items() if k != "prompt"}
        for stream in (False, True):
            body = {**base, **extra, "stream": stream}
            r = await client.post(f"/ollama/api/{route}", json=body, headers=bearer(key))
            assert r.status_code == 400, (route, extra, r.text)
            error = r.json()["error"]
            assert isinstance(error, str) and error.startswith(f"{name}: "), (extra, error)
            assert "max_tokens" not in error
    r = await client.get(f"{V1}/llm/prompts", headers=bearer(key))
    assert r.json()["total"] == 0, r.text


# -- routes ---------------------------------------------------------------------------------------


async def test_models_retrieve_and_unknown_v1_routes_answer_openai_shapes(
    client: httpx.AsyncClient,
):
    key, _ = await setup(client)
    oai = openai.AsyncOpenAI(base_url="http://parity.test/v1", api_key=key, http_client=client)
    got = await oai.models.retrieve(MODEL)
    assert (got.id, got.object, got.owned_by) == (MODEL, "model", "parity")
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.models.retrieve("nope")
    assert caught.value.code == "model_not_found"
    # Model names may hold slashes (Hugging Face ids).
    await llm_runner(client, await sign_in(client, BOB), model("org/tiny-1"))
    assert (await oai.models.retrieve("org/tiny-1")).id == "org/tiny-1"
    with pytest.raises(openai.NotFoundError):
        await oai.embeddings.create(model=MODEL, input="x")
    for method, path in (
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/files"),
        ("POST", "/v1/images/generations"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models/m1"),
    ):
        r = await client.request(method, path, headers=bearer(key))
        assert r.status_code == 404, (path, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, r.text
        assert err["type"] == "invalid_request_error" and path in err["message"]
    r = await client.get(f"/v1/models/{MODEL}")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # The server's own API keeps its own 404 shape.
    r = await client.get(f"{V1}/no-such-thing", headers=bearer(key))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_ollama_version_ps_and_unknown_routes(client: httpx.AsyncClient):
    key, _ = await setup(client)
    r = await client.get("/ollama/api/version")
    assert r.status_code == 200 and r.json() == {"version": __version__}
    r = await client.get("/ollama/api/ps", headers=bearer(key))
    assert r.status_code == 200, r.text
    [running] = r.json()["models"]
    assert (running["name"], running["model"], running["context_length"]) == (MODEL, MODEL, 2048)
    assert (await client.get("/ollama/api/ps")).status_code == 401
    bob = await sign_in(client, BOB)
    await llm_runner(client, bob, model("cold", loaded=False))
    r = await client.get("/ollama/api/ps", headers=bearer(key))
    assert [m["name"] for m in r.json()["models"]] == [MODEL]
    for method, path in (
        ("POST", "/ollama/api/pull"),
        ("POST", "/ollama/api/embed"),
        ("GET", "/ollama/api/chat"),
    ):
        r = await client.request(method, path, headers=bearer(key), json={"model": MODEL})
        assert r.status_code == 404, (path, r.text)
        assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str), r.text


async def test_ollama_show_describes_a_served_model(client: httpx.AsyncClient):
    key, _ = await setup(client)
    bob = await sign_in(client, BOB)
    await llm_runner(client, bob, model("cold", loaded=False, quantization="Q4_1"))
    r = await client.post("/ollama/api/show", json={"model": MODEL}, headers=bearer(key))
    assert r.status_code == 200, r.text
    shown = r.json()
    info = shown["model_info"]
    # Clients read the context length at "<general.architecture>.context_length".
    assert info[f"{info['general.architecture']}.context_length"] == 2048
    assert info["general.name"] == MODEL and shown["capabilities"] == ["completion"]
    # Older clients send "name"; an offline-loaded model is still served by an online runner.
    r = await client.post("/ollama/api/show", json={"name": "cold"}, headers=bearer(key))
    assert r.status_code == 200 and r.json()["details"]["quantization_level"] == "Q4_1", r.text
    assert "cold.context_length" not in r.json()["model_info"]
    r = await client.post("/ollama/api/show", json={"model": "nope"}, headers=bearer(key))
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    for body, field in (({}, "model"), ({"model": MODEL, "extra": 1}, "extra"),
                        ({"model": ""}, "model")):  # fmt: skip
        r = await client.post("/ollama/api/show", json=body, headers=bearer(key))
        assert r.status_code == 400 and r.json()["error"].startswith(field), (body, r.text)
    r = await client.post("/ollama/api/show", json={"model": MODEL})
    assert r.status_code == 401 and set(r.json()) == {"error"}


async def test_ollama_load_requests_answer_load_without_a_prompt(client: httpx.AsyncClient):
    """Ollama's clients load a model with a chat without messages or a generate without a
    prompt: answered ``done_reason: "load"`` (or Ollama's 404), and no prompt is made."""
    key, _ = await setup(client)
    for route, body in (
        ("chat", {"model": MODEL}),
        ("chat", {"model": MODEL, "messages": []}),
        ("generate", {"model": MODEL}),
        ("generate", {"model": MODEL, "prompt": "", "keep_alive": "5m"}),
    ):
        r = await client.post(f"/ollama/api/{route}", json=body, headers=bearer(key))
        assert r.status_code == 200, (body, r.text)
        answer = r.json()
        assert (answer["model"], answer["done"], answer["done_reason"]) == (MODEL, True, "load")
        assert answer["message" if route == "chat" else "response"] in (
            {"role": "assistant", "content": ""},
            "",
        )
    r = await client.get(f"{V1}/llm/prompts", headers=bearer(key))
    assert r.json()["total"] == 0
    r = await client.post("/ollama/api/chat", json={"model": "nope"}, headers=bearer(key))
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    r = await client.post("/ollama/api/generate", json={"model": MODEL})
    assert r.status_code == 401 and set(r.json()) == {"error"}
