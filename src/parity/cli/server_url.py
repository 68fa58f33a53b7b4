"""Which server a client command talks to. One rule for every command (storage, balance,
auth, parity-runner, parity-runner status):

1. ``--server URL`` (parity-runner also reads it from ``RUNNER_SERVER_URL``, the original
   runner's name for it);
2. else ``PARITY_SERVER_URL``;
3. else the server the credentials file beside the keystore last signed in to;
4. else the server's own configuration, read as the server reads it (the environment, then
   ``.env`` or ``PARITY_CONFIG_PATH``): ``SERVER_PUBLIC_URL``, else
   ``http://SERVER_HOST:SERVER_PORT`` (a wildcard bind address means this machine).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from parity.cli.credentials import CredentialsError, last_server
from parity.config import load_settings
from parity.errors import ConfigError

SERVER_URL_ENV = "PARITY_SERVER_URL"
# A server bound to every interface is reached on this machine through loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


class ServerUrlError(Exception):
    """No usable server URL; the message says where the bad value came from."""


@dataclass(frozen=True)
class ServerChoice:
    url: str  # no trailing slash
    source: str  # where it came from, for messages: "--server", "PARITY_SERVER_URL", ...

    def describe(self) -> str:
        return f"{self.url} (from {self.source})"


def _check(url: str, source: str) -> ServerChoice:
    value = url.strip().rstrip("/")
    try:
        parsed = httpx.URL(value)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ServerUrlError(f"{source} is {url!r}: expected http(s)://host[:port]")
    return ServerChoice(value, source)


def _host_for_url(host: str) -> str:
    host = _WILDCARDS.get(host.strip(), host.strip())
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass  # a name, not an address
    return host


def configured_server_url(
    config: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> ServerChoice:
    """Step 4 alone: the URL the server's own settings describe (``config``: the settings
    file; one that does not exist is read as empty: the command that names it says so)."""
    named = config is not None and Path(config).expanduser().is_file()
    try:
        if named:
            settings = load_settings(environ, config_file=config)
        else:
            settings = load_settings(environ, env_file=None if config is not None else ".env")
    except ConfigError as exc:
        raise ServerUrlError(
            f"cannot read the server settings to find its URL ({exc}); "
            f"pass --server URL or set {SERVER_URL_ENV}"
        ) from None
    if settings.server_public_url:
        return _check(settings.server_public_url, "SERVER_PUBLIC_URL")
    url = f"http://{_host_for_url(settings.server_host)}:{settings.server_port}"
    return _check(url, "SERVER_HOST/SERVER_PORT")


def resolve_server_url(
    flag: str | None,
    *,
    credentials: Path | None = None,
    config: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    flag_source: str = "--server",
) -> ServerChoice:
    """The server a client command talks to; see the module docstring for the rule.

    ``credentials`` is the credentials file beside the keystore the command uses (None skips
    step 3); ``config`` the .env file (default ./.env, or PARITY_CONFIG_PATH)."""
    env = os.environ if environ is None else environ
    if flag:
        return _check(flag, flag_source)
    if env.get(SERVER_URL_ENV):
        return _check(env[SERVER_URL_ENV], SERVER_URL_ENV)
    if credentials is not None:
        try:
            last = last_server(credentials)
        except CredentialsError as exc:
            raise ServerUrlError(str(exc)) from None
        if last:
            return _check(last, f"the last sign-in in {credentials}")
    return configured_server_url(config, env)


class ServerHttpClient(httpx.Client):
    """An httpx client for the chosen server that knows where its URL came from, so a request
    that gets no answer can say which server it tried and why that one, and what to run when
    the server refuses its token."""

    def __init__(
        self,
        choice: ServerChoice,
        token: str | None,
        *,
        read_timeout: float,
        connect_timeout: float,
        sign_in_hint: str | None = None,
    ) -> None:
        super().__init__(
            base_url=choice.url,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )
        self.choice = choice
        # What to run when the server refuses the token (401); see parity.cli.session.
        self.sign_in_hint = sign_in_hint


def failure_text(exc: BaseException) -> str:
    """What went wrong, in words: httpx's timeouts often carry no text, so their kind."""
    return str(exc) or type(exc).__name__


def no_answer(client: httpx.Client, exc: httpx.HTTPError, doing: str = "the request") -> str:
    """The message for a request that got no (complete) answer: ``cannot reach URL (from
    SOURCE): reason`` when no connection was made, else ``DOING to URL (from SOURCE) failed:
    reason``."""
    where = client.choice.describe() if isinstance(client, ServerHttpClient) else client.base_url
    reason = failure_text(exc)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot reach {where}: {reason}"
    return f"{doing} to {where} failed: {reason}"
