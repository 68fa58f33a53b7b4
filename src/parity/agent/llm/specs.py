"""``--llm-backend KIND=URL`` specs (repeatable) and ``PARITY_LLM_BACKENDS`` (comma-separated).

KIND is ``openai`` (any OpenAI-compatible server: vLLM, llama.cpp server, LM Studio) or
``ollama``. URL is the server's base URL, ``http`` or ``https``; a trailing ``/v1`` (OpenAI
convention) or ``/api`` (Ollama) is dropped, since the clients add the API paths themselves.
Flags win: when any ``--llm-backend`` is given the environment value is ignored. Repeated specs
(same kind and URL) count once; order is kept (it breaks ties when two backends serve a model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from parity.agent.llm.backend import LlmBackend, Timeouts
from parity.agent.llm.ollama import OllamaBackend
from parity.agent.llm.openai_compat import OpenAIBackend

__all__ = ["KINDS", "BackendSpec", "build_backend", "parse_backend_spec", "parse_backend_specs"]

KINDS = ("openai", "ollama")
_API_SUFFIX = {"openai": "/v1", "ollama": "/api"}


@dataclass(frozen=True, slots=True)
class BackendSpec:
    kind: str
    url: str


def parse_backend_spec(spec: str, *, source: str = "--llm-backend") -> BackendSpec:
    """One ``KIND=URL``; a ValueError names ``source`` and says what is wrong."""
    kind, sep, url = spec.strip().partition("=")
    kind = kind.strip().lower()
    url = url.strip()
    if not sep or not kind or not url:
        raise ValueError(f"{source}: {spec!r} is not KIND=URL (e.g. ollama=http://127.0.0.1:11434)")
    if kind not in KINDS:
        raise ValueError(f"{source}: unknown backend kind {kind!r}; use one of {', '.join(KINDS)}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{source}: {url!r} is not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        # Backend URLs appear in logs and error messages: keep credentials out of them.
        raise ValueError(f"{source}: credentials in the URL are not supported")
    if parts.query or parts.fragment:
        raise ValueError(f"{source}: {url!r} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError(f"{source}: {url!r} has an invalid port") from exc
    path = parts.path.rstrip("/")
    if path.endswith(_API_SUFFIX[kind]):
        path = path[: -len(_API_SUFFIX[kind])]
    return BackendSpec(kind=kind, url=f"{parts.scheme}://{parts.netloc}{path}")


def parse_backend_specs(flags: Sequence[str], env_value: str | None = None) -> list[BackendSpec]:
    """The backends to use: the ``--llm-backend`` flags, or else the comma-separated
    ``PARITY_LLM_BACKENDS`` value (empty entries are skipped)."""
    if flags:
        specs = [parse_backend_spec(s) for s in flags]
    else:
        entries = [e for e in (env_value or "").split(",") if e.strip()]
        specs = [parse_backend_spec(e, source="PARITY_LLM_BACKENDS") for e in entries]
    return list(dict.fromkeys(specs))


def build_backend(
    spec: BackendSpec,
    *,
    timeouts: Timeouts | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LlmBackend:
    """The client for one spec."""
    if spec.kind == "ollama":
        return OllamaBackend(spec.url, timeouts=timeouts, transport=transport)
    return OpenAIBackend(spec.url, timeouts=timeouts, transport=transport)
