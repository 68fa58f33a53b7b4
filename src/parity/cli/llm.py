"""`parity-server llm`: the models the network serves, and a prompt from the command line (its
answer on stdout; with --stream, printed as it is produced, through the server's
OpenAI-compatible gateway). Talks to a server over HTTP with the session `parity-server auth`
stored for the keystore's address (or --token); the server is chosen by
:mod:`parity.cli.server_url`."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import httpx
import typer

from parity.cli import client as cli
from parity.cli.client import JsonOpt, KeystoreOpt, ServerOpt, TokenOpt
from parity.cli.server_url import no_answer
from parity.cli.tables import table

llm_app = typer.Typer(
    name="llm",
    help="LLM prompts: list the models online runners serve, send a prompt.",
    no_args_is_help=True,
)

API = "/api/v1/llm"
STREAM_PATH = "/v1/completions"  # the gateway: server-sent events, usage in the last chunk
MAX_WAIT_S = 30.0
# The gateway names the prompt of each answer here (parity.gateway.errors.PROMPT_ID_HEADER; not
# imported, so the command does not load the server's web framework).
PROMPT_ID_HEADER = "X-Parity-Prompt-Id"


@llm_app.command("models")
def models_cmd(
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The models of the online runners: runners reporting each, loaded anywhere, lowest price
    per 1,000 tokens (base units), largest context."""
    with cli.connect(server, keystore, token, read_timeout=30.0) as client:
        doc = cli.send(client, "GET", f"{API}/models").json()
    if as_json:
        cli.print_json(doc)
        return
    if not doc["models"]:
        typer.echo("no online runner reports a model", err=True)
        return
    rows = [("MODEL", "LOADED", "RUNNERS", "IN/1K", "OUT/1K", "CONTEXT")]
    for m in doc["models"]:
        rows.append(
            (
                m["model_name"],
                "yes" if m["is_loaded"] else "no",
                f"{m['loaded_runner_count']}/{m['runner_count']}",
                m["lowest_price_per_1k_input"],
                m["lowest_price_per_1k_output"],
                str(m["max_context_length"] or "-"),
            )
        )
    for line in table(rows):
        typer.echo(line)


@llm_app.command("prompt")
def prompt_cmd(
    text: Annotated[str, typer.Argument(help="The prompt.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")],
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", min=1, help="Output tokens at most (server default)."),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", min=0, max=MAX_WAIT_S, help="Seconds to wait for the answer (0: submit only)."
        ),
    ] = MAX_WAIT_S,
    server: ServerOpt = None,
    token: TokenOpt = None,
    keystore: KeystoreOpt = None,
    as_json: JsonOpt = False,
    stream: Annotated[
        bool, typer.Option("--stream", help="Print the answer token by token as it comes.")
    ] = False,
) -> None:
    """Send TEXT to MODEL and print the answer. If it is not finished within --wait seconds,
    prints the prompt's id (read it later at /api/v1/llm/prompts/ID) and exits 0; a failed
    prompt exits 1 with its reason. With --stream the answer is printed as the runner produces
    it (the server's own time limit applies, not --wait) and the token usage and cost at the
    end; one that breaks off after its first token exits 1 with its error, after the usage and
    cost billed for the part printed."""
    body: dict[str, Any] = {"model": model, "prompt": text}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        if as_json:
            raise cli.fail("--json and --stream cannot be combined", 2)
        with cli.connect(server, keystore, token, read_timeout=MAX_WAIT_S + 30.0) as client:
            _stream_prompt(client, body)
        return
    with cli.connect(server, keystore, token, read_timeout=wait + 30.0) as client:
        if wait > 0:
            _require_served(client, model)
        r = cli.call(client, "POST", f"{API}/prompts", json=body, params={"wait": wait})
    if r.status_code not in (200, 202):
        raise cli.refused(r, client)
    doc = r.json()
    if as_json:
        cli.print_json(doc)
    if doc["status"] == "failed":
        raise cli.fail(f"prompt {doc['id']} failed: {doc.get('error')}")
    if doc["status"] != "completed":
        typer.echo(f"prompt {doc['id']} is {doc['status']}", err=True)
        if not as_json:
            typer.echo(doc["id"])
        return
    if not as_json:
        typer.echo(doc["response"])
        usage = doc.get("usage") or {}
        typer.echo(
            f"{usage.get('input_tokens')} input + {usage.get('output_tokens')} output tokens, "
            f"cost {doc.get('cost')} base units",
            err=True,
        )


def _require_served(client: httpx.Client, model: str) -> None:
    """Refuse at once, as --stream does, a model that no online runner has loaded: waiting for
    the answer would only wait out --wait. (With --wait 0 the prompt is queued anyway, until a
    runner serving it comes online or its deadline passes.)"""
    r = cli.send(client, "GET", f"{API}/models")
    loaded = sorted(m["model_name"] for m in r.json()["models"] if m["is_loaded"])
    if model not in loaded:
        served = ", ".join(loaded) or "none"
        raise cli.fail(
            f"no online runner serves model {model!r} (loaded now: {served}); "
            "pass --wait 0 to queue the prompt until one does"
        )


def _events(response: httpx.Response) -> Any:
    """The JSON payloads of a server-sent event stream, up to ``[DONE]``."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, keep-alives
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            raise cli.fail(f"the server sent an event that is not JSON: {data[:200]}") from None


def _stream_prompt(client: httpx.Client, body: dict[str, Any]) -> None:
    """Stream the answer to stdout as its chunks arrive; the usage and cost go to stderr."""
    request = {**body, "stream": True, "stream_options": {"include_usage": True}}
    usage: dict[str, Any] | None = None
    printed = False
    try:
        with client.stream("POST", STREAM_PATH, json=request) as r:
            if r.status_code != 200:
                raise cli.refused(r, client)
            prompt_id = r.headers.get(PROMPT_ID_HEADER)
            for event in _events(r):
                if isinstance(event.get("error"), dict):
                    if printed:
                        typer.echo("")
                    billed = _billed_partial(client, prompt_id)
                    if billed is not None:
                        typer.echo(billed, err=True)
                    err = event["error"]
                    raise cli.fail(f"{err.get('message')} ({err.get('code')})")
                for choice in event.get("choices") or ():
                    text = choice.get("text")
                    if text:
                        sys.stdout.write(text)
                        sys.stdout.flush()
                        printed = True
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
    except httpx.HTTPError as exc:
        raise cli.fail(no_answer(client, exc, "streaming")) from None
    typer.echo("")
    if usage is None:
        raise cli.fail("the stream ended without its usage (the answer may be incomplete)")
    spent = f"{usage.get('prompt_tokens')} input + {usage.get('completion_tokens')} output tokens"
    cost = _streamed_cost(client, prompt_id)
    typer.echo(spent + (f", cost {cost} base units" if cost is not None else ""), err=True)


def _record(client: httpx.Client, prompt_id: str | None) -> dict[str, Any] | None:
    """The record of the prompt just streamed (the gateway names the prompt in its answer's
    ``X-Parity-Prompt-Id`` header). None when it cannot be read (nothing else depends on it)."""
    if not prompt_id:
        return None
    try:
        r = client.get(f"{API}/prompts/{prompt_id}")
        doc = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _streamed_cost(client: httpx.Client, prompt_id: str | None) -> str | None:
    """The cost of the prompt just streamed: the stream carries the usage but not the cost,
    which the prompt's record holds. None when it cannot be read."""
    cost = (_record(client, prompt_id) or {}).get("cost")
    return None if cost is None else str(cost)


def _billed_partial(client: httpx.Client, prompt_id: str | None) -> str | None:
    """What a stream that broke off after its first token is billed for (the text printed
    before its error: the prompt's ``response``, ``usage.partial``), as the line that says so;
    None when it is billed nothing or its record cannot be read."""
    doc = _record(client, prompt_id) or {}
    usage = doc.get("usage")
    if not isinstance(usage, dict) or usage.get("partial") is not True:
        return None
    return (
        f"billed for the partial answer: {usage.get('input_tokens')} input + "
        f"{usage.get('output_tokens')} output tokens, cost {doc.get('cost')} base units"
    )
