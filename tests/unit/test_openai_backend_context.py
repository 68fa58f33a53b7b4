"""The context length an OpenAI-compatible backend's model listing reports: llama.cpp's server
names both the context it was started with (``meta.n_ctx``, what it accepts) and the model's
trained one (``meta.n_ctx_train``, often larger); the runner reports the first."""

from __future__ import annotations

from typing import Any

import httpx

from parity.agent.llm.openai_compat import OpenAIBackend


def listing(meta: dict[str, Any]) -> OpenAIBackend:
    """A backend whose ``/v1/models`` lists one model with llama.cpp's ``meta``."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/v1/models")
        item = {"id": "smollm2-135m", "object": "model", "owned_by": "llamacpp", "meta": meta}
        return httpx.Response(200, json={"object": "list", "data": [item]})

    return OpenAIBackend("http://llama.test", transport=httpx.MockTransport(answer))


async def test_llama_cpp_reports_the_context_it_was_started_with() -> None:
    backend = listing({"n_ctx": 2048, "n_ctx_train": 8192, "n_vocab": 49152})
    [model] = await backend.list_models()
    assert model.context_length == 2048
    await backend.aclose()


async def test_an_older_llama_cpp_without_n_ctx_reports_the_trained_context() -> None:
    backend = listing({"n_ctx_train": 8192})
    [model] = await backend.list_models()
    assert model.context_length == 8192
    await backend.aclose()
