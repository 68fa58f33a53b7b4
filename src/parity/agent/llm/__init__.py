"""The runner's LLM side: clients of Ollama and OpenAI-compatible backends, backend specs,
and the ``llm`` task executor."""

from parity.agent.llm.backend import Completion, LlmBackend, ModelInfo, Timeouts, TokenChunk
from parity.agent.llm.discovery import ModelDiscovery
from parity.agent.llm.errors import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    BadResponse,
    ModelNotFound,
)
from parity.agent.llm.executor import LlmExecutor, PromptResult, run_prompt
from parity.agent.llm.ollama import OllamaBackend
from parity.agent.llm.openai_compat import OpenAIBackend
from parity.agent.llm.specs import (
    BackendSpec,
    build_backend,
    parse_backend_spec,
    parse_backend_specs,
    parse_price_spec,
    parse_price_specs,
)

__all__ = [
    "BackendError",
    "BackendRejected",
    "BackendSpec",
    "BackendUnavailable",
    "BadResponse",
    "Completion",
    "LlmBackend",
    "LlmExecutor",
    "ModelDiscovery",
    "ModelInfo",
    "ModelNotFound",
    "OllamaBackend",
    "OpenAIBackend",
    "PromptResult",
    "Timeouts",
    "TokenChunk",
    "build_backend",
    "parse_backend_spec",
    "parse_backend_specs",
    "parse_price_spec",
    "parse_price_specs",
    "run_prompt",
]
