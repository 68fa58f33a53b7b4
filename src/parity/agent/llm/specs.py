"""``--llm-backend KIND=URL`` specs (repeatable) and ``PARITY_LLM_BACKENDS`` (comma-separated);
``--llm-price MODEL=IN/OUT`` (repeatable) and ``PARITY_LLM_PRICES`` (comma-separated).

KIND is ``openai`` (any OpenAI-compatible server: vLLM, llama.cpp server, LM Studio) or
``ollama``. URL is the server's base URL, ``http`` or ``https``; a trailing ``/v1`` (OpenAI
convention) or ``/api`` (Ollama) is dropped, since the clients add the API paths themselves.
Flags win: when any ``--llm-backend`` is given the environment value is ignored. Repeated specs
(same kind and URL) count once; order is kept (it breaks ties when two backends serve a model).

A price is what this runner asks per 1,000 input (IN) and output (OUT) tokens of MODEL, in the
token's base units, as decimal integer strings (amounts are integers in base units everywhere;
``0`` is free). MODEL is the name the backend reports; the last ``=`` separates it from the
price, since model names may hold ``:`` and ``/``. As for backends, flags win over the
environment. A model without a price is reported without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from parity.agent.llm.backend import LlmBackend, Timeouts
from parity.agent.llm.ollama import OllamaBackend
from parity.agent.llm.openai_compat import OpenAIBackend
from parity.core.llm.metering import LlmPrice
from parity.core.llm.request import MAX_MODEL_NAME

__all__ = [
    "KINDS",
    "BackendSpec",
    "build_backend",
    "parse_backend_spec",
    "parse_backend_specs",
    "parse_price_spec",
    "parse_price_specs",
]

KINDS = ("openai", "ollama")
_API_SUFFIX = {"openai": "/v1", "ollama": "/api"}
# Amounts are NUMERIC(78,0) on the server: a longer price could not be stored or billed.
_MAX_PRICE_DIGITS = 78


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


def parse_price_spec(spec: str, *, source: str = "--llm-price") -> tuple[str, LlmPrice]:
    """One ``MODEL=IN/OUT``; a ValueError names ``source`` and says what is wrong."""
    model, sep, price = spec.strip().rpartition("=")
    model = model.strip()
    if not sep or not model or not price.strip():
        raise ValueError(f"{source}: {spec!r} is not MODEL=IN/OUT (e.g. llama3:8b=100/300)")
    if len(model) > MAX_MODEL_NAME:
        raise ValueError(f"{source}: the model name is longer than {MAX_MODEL_NAME} characters")
    parts = [p.strip() for p in price.split("/")]
    if len(parts) != 2:
        raise ValueError(
            f"{source}: price {price.strip()!r} of {model!r} is not IN/OUT (base units per "
            "1000 input and output tokens, e.g. 100/300)"
        )
    amounts = []
    for side, text in zip(("input", "output"), parts, strict=True):
        # isdecimal() alone would accept other scripts' digits; amounts are ASCII integers.
        if not (text.isascii() and text.isdecimal()) or len(text) > _MAX_PRICE_DIGITS:
            raise ValueError(
                f"{source}: the {side} price of {model!r} must be a whole number of base units "
                f"(0 or more, at most {_MAX_PRICE_DIGITS} digits), got {text!r}"
            )
        amounts.append(int(text))
    return model, LlmPrice(input_per_1k=amounts[0], output_per_1k=amounts[1])


def parse_price_specs(flags: Sequence[str], env_value: str | None = None) -> dict[str, LlmPrice]:
    """The prices by model: the ``--llm-price`` flags, or else the comma-separated
    ``PARITY_LLM_PRICES`` value (empty entries are skipped). A model priced twice is refused,
    whatever the two prices: which one was meant cannot be known."""
    if flags:
        pairs = [parse_price_spec(s) for s in flags]
        source = "--llm-price"
    else:
        entries = [e for e in (env_value or "").split(",") if e.strip()]
        pairs = [parse_price_spec(e, source="PARITY_LLM_PRICES") for e in entries]
        source = "PARITY_LLM_PRICES"
    prices: dict[str, LlmPrice] = {}
    for model, price in pairs:
        if model in prices:
            raise ValueError(f"{source}: model {model!r} is priced twice")
        prices[model] = price
    return prices


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
