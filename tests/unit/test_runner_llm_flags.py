"""``parity-runner --llm-backend KIND=URL`` / ``--llm-price MODEL=IN/OUT`` (and their
environment variables): parsing, precedence, refusals that name the flag, and prices in the
model report."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from parity.agent import cli as runner_cli
from parity.agent.llm import BackendSpec, LlmExecutor, ModelInfo, parse_price_spec
from parity.agent.llm.backend import Event
from parity.agent.llm.specs import parse_price_specs
from parity.core.llm.metering import LlmPrice
from parity.core.llm.request import LlmRequest

PRICED = [
    ("llama3:8b=100/300", "llama3:8b", LlmPrice(100, 300)),
    ("meta-llama/Llama-3.1-8B=0/0", "meta-llama/Llama-3.1-8B", LlmPrice(0, 0)),
    (" tiny = 7 / 11 ", "tiny", LlmPrice(7, 11)),
    # The last "=" ends the model name.
    ("odd=name=1/2", "odd=name", LlmPrice(1, 2)),
    # Base units of an 18-decimal token overflow 64 bits: prices are arbitrary integers.
    ("big=" + "9" * 30 + "/1", "big", LlmPrice(int("9" * 30), 1)),
]


@pytest.mark.parametrize(("spec", "model", "price"), PRICED)
def test_a_price_spec_gives_the_model_and_its_per_1k_prices(
    spec: str, model: str, price: LlmPrice
) -> None:
    assert parse_price_spec(spec) == (model, price)


REFUSED_PRICES = [
    ("llama3", "not MODEL=IN/OUT"),
    ("=1/2", "not MODEL=IN/OUT"),
    ("m=", "not MODEL=IN/OUT"),
    ("m=5", "is not IN/OUT"),
    ("m=1/2/3", "is not IN/OUT"),
    ("m=-1/2", "input price of 'm' must be a whole number"),
    ("m=1/0.5", "output price of 'm' must be a whole number"),
    ("m=1e3/1", "input price"),
    ("m=/1", "input price"),
    ("m=\u0661/1", "input price"),  # an Arabic-Indic digit: amounts are ASCII integers
    ("m=" + "1" * 79 + "/1", "at most 78 digits"),
    ("m" * 257 + "=1/1", "longer than 256"),
]


@pytest.mark.parametrize(("spec", "message"), REFUSED_PRICES)
def test_a_bad_price_is_refused_naming_the_flag_and_the_fault(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="--llm-price") as caught:
        parse_price_spec(spec)
    assert message in str(caught.value)


def test_price_flags_win_over_the_environment_which_is_comma_separated() -> None:
    env = "a=1/2, b=3/4,,"
    assert parse_price_specs([], env) == {"a": LlmPrice(1, 2), "b": LlmPrice(3, 4)}
    assert parse_price_specs(["c=5/6"], env) == {"c": LlmPrice(5, 6)}
    with pytest.raises(ValueError, match="PARITY_LLM_PRICES"):
        parse_price_specs([], "a=1/2,b=x/1")


def test_a_model_priced_twice_is_refused_even_at_the_same_price() -> None:
    with pytest.raises(ValueError, match="'a' is priced twice"):
        parse_price_specs(["a=1/2", "a=1/2"])


def test_llm_config_reads_the_environment_only_without_flags() -> None:
    env = {
        "PARITY_LLM_BACKENDS": "openai=http://env:8000/v1",
        "PARITY_LLM_PRICES": "m=1/2",
    }
    specs, prices = runner_cli.llm_config([], [], None, env)
    assert specs == [BackendSpec("openai", "http://env:8000")]
    assert prices == {"m": LlmPrice(1, 2)}
    specs, prices = runner_cli.llm_config(["ollama=http://flag:11434"], ["n=3/4"], None, env)
    assert specs == [BackendSpec("ollama", "http://flag:11434")]
    assert prices == {"n": LlmPrice(3, 4)}


def test_the_older_ollama_url_flag_is_one_more_ollama_backend_counted_once() -> None:
    specs, _ = runner_cli.llm_config(
        ["openai=http://a:8000", "ollama=http://o:11434"], [], "http://o:11434/", {}
    )
    assert specs == [
        BackendSpec("openai", "http://a:8000"),
        BackendSpec("ollama", "http://o:11434"),
    ]
    specs, _ = runner_cli.llm_config([], [], "http://o:11434", {})
    assert specs == [BackendSpec("ollama", "http://o:11434")]


@pytest.mark.parametrize(
    ("flags", "prices", "ollama", "named"),
    [
        (["vllm=http://h:8000"], [], None, "--llm-backend"),
        ([], ["m=1"], None, "--llm-price"),
        ([], [], "ftp://o", "--ollama-url"),
    ],
)
def test_llm_config_turns_a_bad_value_into_a_usage_error_naming_it(
    flags: list[str], prices: list[str], ollama: str | None, named: str
) -> None:
    with pytest.raises(typer.BadParameter, match=named):
        runner_cli.llm_config(flags, prices, ollama, {})


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--llm-backend", "openai=not-a-url"], {}, "--llm-backend"),
        (["--llm-price", "m=1/x"], {}, "--llm-price"),
        ([], {"PARITY_LLM_BACKENDS": "bogus"}, "PARITY_LLM_BACKENDS"),
        ([], {"PARITY_LLM_PRICES": "m=1"}, "PARITY_LLM_PRICES"),
    ],
)
def test_the_runner_refuses_a_bad_llm_setting_before_it_asks_for_anything(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    # No keystore exists and no password is given: the refusal comes first, as a usage error.
    keystore = tmp_path / "missing.json"
    result = CliRunner().invoke(
        runner_cli.app,
        ["--server", "http://127.0.0.1:9", "--keystore", str(keystore), *args],
        env={"PARITY_HOME": str(tmp_path), **env},
    )
    assert result.exit_code == 2, result.output
    assert named in result.output


class ListingBackend:
    kind = "openai"
    base_url = "http://fake"

    def __init__(self, models: list[ModelInfo]) -> None:
        self.models = models

    async def list_models(self) -> list[ModelInfo]:
        return self.models

    async def generate(
        self, request: LlmRequest, *, total_timeout: float | None = None
    ) -> AsyncGenerator[Event, None]:
        raise AssertionError("not used")
        yield  # pragma: no cover

    async def aclose(self) -> None:
        return None


async def test_the_model_report_carries_prices_as_decimal_strings_where_set() -> None:
    backend = ListingBackend(
        [
            ModelInfo("priced", context_length=8192, quantization="Q4_0"),
            ModelInfo("free-to-set"),
        ]
    )
    report = await LlmExecutor([backend]).models_report(
        {"priced": LlmPrice(100, 300), "unserved": LlmPrice(1, 1)}
    )
    by_name = {e["model_name"]: e for e in report}
    assert set(by_name) == {"priced", "free-to-set"}
    priced = by_name["priced"]
    assert priced["price_per_1k_input"] == "100" and priced["price_per_1k_output"] == "300"
    assert priced["max_tokens"] == 8192 and priced["context_length"] == 8192
    assert priced["quantization"] == "Q4_0" and priced["is_loaded"] is True
    unpriced = by_name["free-to-set"]
    assert "price_per_1k_input" not in unpriced and "price_per_1k_output" not in unpriced
    assert unpriced["max_tokens"] == 4096 and "context_length" not in unpriced
