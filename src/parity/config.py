"""Configuration: one pydantic-settings root, read once at start-up.

Names follow the original server's README (SERVER_*, DATABASE_*, RUNNER_*, FILECOIN_*); the Go
code's BLOCKCHAIN_* spellings are accepted as aliases (FILECOIN_* wins; a conflict is warned).
A bad value stops start-up with a message that names the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from dotenv import dotenv_values
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from parity.core.billing.units import AmountError, parse_base_units, parse_token_amount
from parity.errors import ConfigError

# Names the .env file to read instead of ./.env (a --config flag wins over it).
CONFIG_PATH_ENV = "PARITY_CONFIG_PATH"

# FILECOIN_* key -> the Go code's BLOCKCHAIN_* alias.
ALIASES: dict[str, str] = {
    "FILECOIN_RPC": "BLOCKCHAIN_RPC",
    "FILECOIN_CHAIN_ID": "BLOCKCHAIN_CHAIN_ID",
    "FILECOIN_TOKEN_ADDRESS": "BLOCKCHAIN_TOKEN_ADDRESS",
    "FILECOIN_STAKE_WALLET_ADDRESS": "BLOCKCHAIN_STAKE_WALLET_ADDRESS",
    "FILECOIN_TOKEN_SYMBOL": "BLOCKCHAIN_TOKEN_SYMBOL",
    "FILECOIN_NETWORK_NAME": "BLOCKCHAIN_NETWORK_NAME",
    "FILECOIN_IPFS_ENDPOINT": "BLOCKCHAIN_IPFS_ENDPOINT",
    "FILECOIN_GATEWAY_URL": "BLOCKCHAIN_GATEWAY_URL",
    "FILECOIN_CREATE_STORAGE_DEALS": "BLOCKCHAIN_CREATE_STORAGE_DEALS",
    # Short spellings of unit-named keys.
    "FL_ROUND_TIMEOUT_SECONDS": "FL_ROUND_TIMEOUT",
}


class Settings(BaseSettings):
    """Every key, with its unit. `.env.example` documents the same list."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    # -- server
    server_host: str = "127.0.0.1"
    server_port: int = Field(8080, ge=1, le=65535)
    server_endpoint: str = "/api"
    server_public_url: str = ""
    parity_home: Path = Path("~/.parity")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    shutdown_grace_seconds: float = Field(20.0, gt=0)
    server_keepalive_seconds: float = Field(75.0, gt=0)
    server_max_connections: int = Field(0, ge=0)  # 0: from the open-file limit
    max_request_body_bytes: int = Field(10 * 1024 * 1024, gt=0)

    # -- database
    # Both may hold the password: kept out of repr() and out of error messages.
    database_url: str = Field("", repr=False)
    database_username: str = ""
    database_password: str = Field("", repr=False)
    database_host: str = ""
    database_port: int = Field(5432, ge=1, le=65535)
    database_name: str = ""
    database_pool_size: int = Field(10, ge=1)
    database_busy_timeout_ms: int = Field(5000, ge=0)

    # -- scheduling (SCHEDULER_INTERVAL keeps its original meaning: heartbeat timeout in minutes)
    scheduler_interval: float | None = Field(None, gt=0)
    scheduler_interval_seconds: float = Field(5.0, gt=0)
    runner_offline_timeout_seconds: float | None = Field(None, gt=0)
    runner_heartbeat_interval_seconds: float = Field(30.0, gt=0)
    task_lease_seconds: float | None = Field(None, gt=0)
    retention_interval_seconds: float = Field(3600.0, gt=0)
    task_offer_seconds: float = Field(10.0, gt=0)
    task_max_pending_per_client: int = Field(10000, ge=1)
    task_max_pending_total: int = Field(1000000, ge=1)
    task_log_max_bytes: int = Field(1024 * 1024, ge=1024)
    task_output_inline_max_bytes: int = Field(64 * 1024, ge=1024)
    task_retry_base_seconds: float = Field(5.0, ge=0)
    task_retry_max_seconds: float = Field(300.0, ge=0)
    long_poll_recheck_seconds: float = Field(2.0, gt=0)
    wakeup_relay: Literal["auto", "off"] = "auto"
    # LLM token relay between replicas: empty = in-process (one replica), else a Redis URL
    # or NATS URLs.
    stream_bus_url: str = Field("", repr=False)
    push_interval_seconds: float = Field(1.0, gt=0)
    runner_min_version: str = "0.0.0"

    # -- LLM prompts
    llm_queue_timeout_seconds: float = Field(120.0, gt=0)
    llm_default_max_tokens: int = Field(512, ge=1)
    # A prompt routed to a runner that has not claimed it after this long is routed again
    # (another runner first): a runner that died without going offline yet holds no prompt.
    llm_offer_seconds: float = Field(10.0, gt=0)
    # The OpenAI/Ollama-compatible gateway: how long a request waits for its prompt.
    llm_gateway_timeout_seconds: float = Field(300.0, gt=0)

    # -- federated learning (FL_ROUND_TIMEOUT is the same key)
    # A round's deadline after it opens, unless the session sets config.round_timeout_seconds.
    fl_round_timeout_seconds: float = Field(600.0, gt=0)

    # -- identity
    admin_addresses: str = ""
    auth_session_ttl_seconds: int = Field(86400, gt=0)
    auth_nonce_ttl_seconds: int = Field(300, gt=0)
    auth_max_open_nonces: int = Field(5, ge=1)
    # Sign-in nonces one client address may ask for per minute (0 = unlimited), in bursts of up
    # to AUTH_NONCE_BURST; past it 429 with Retry-After. Counted per process.
    auth_nonce_rate_per_minute: float = Field(60.0, ge=0, le=1_000_000, allow_inf_nan=False)
    auth_nonce_burst: int = Field(60, ge=1, le=1_000_000)
    # Seconds an authenticated bearer token is remembered in process (0 = look it up every time).
    auth_cache_seconds: float = Field(5.0, ge=0, le=300)
    idempotency_ttl_seconds: int = Field(86400, gt=0)

    # -- chain and storage (FILECOIN_*, aliases BLOCKCHAIN_*)
    filecoin_rpc: str = ""
    filecoin_chain_id: int = Field(314159, ge=1)
    filecoin_token_address: str = ""
    filecoin_stake_wallet_address: str = ""
    filecoin_token_symbol: str = "TOKEN"
    filecoin_network_name: str = ""
    filecoin_ipfs_endpoint: str = ""
    filecoin_gateway_url: str = ""
    filecoin_create_storage_deals: bool = False
    filecoin_confirmations: int = Field(5, ge=0)
    filecoin_rpc_timeout_seconds: float = Field(30.0, gt=0)
    filecoin_receipt_timeout_seconds: float = Field(300.0, gt=0)
    filecoin_receipt_poll_seconds: float = Field(2.0, gt=0)
    filecoin_gas_margin: float = Field(1.2, ge=1.0, le=10.0)

    # -- staking (amounts are integer base units; a decimal point or exponent is refused)
    stake_id_mode: Literal["address", "device"] = "address"
    min_stake: int = Field(0, ge=0)
    min_stake_tokens: str = ""
    stake_cache_seconds: float = Field(10.0, ge=0)

    # -- pricing (base units; all zero = work is free and nothing is reserved or posted)
    price_task_base: int = Field(0, ge=0)
    price_cpu_core_second: int = Field(0, ge=0)
    price_memory_mb_second: int = Field(0, ge=0)
    price_gpu_second: int = Field(0, ge=0)
    billing_default_timeout_seconds: int = Field(3600, gt=0)
    protocol_fee_bps: int = Field(0, ge=0, le=10000)
    protocol_fee_address: str = ""

    # -- settlement (one signer: the StakeWallet owner's key)
    settlement_private_key: str = Field("", repr=False)
    settlement_keystore_path: Path | None = None
    settlement_keystore_password: str = Field("", repr=False)
    settlement_interval_seconds: float = Field(5.0, gt=0)
    settlement_batch_entries: int = Field(100, ge=1)
    settlement_fee_bump_seconds: float = Field(120.0, gt=0)
    settlement_fee_bump_percent: int = Field(15, ge=10, le=500)
    settlement_max_fee_per_gas: int = Field(0, ge=0)

    # -- content store (FILECOIN_IPFS_ENDPOINT selects kubo; else the local blockstore)
    storage_path: Path | None = None
    storage_max_upload_bytes: int = Field(1024 * 1024 * 1024, gt=0)
    storage_quota_bytes: int = Field(10 * 1024 * 1024 * 1024, ge=0)
    storage_max_pins: int = Field(10000, ge=0)
    storage_gc_grace_seconds: float = Field(3600.0, ge=0)
    storage_kubo_timeout_seconds: float = Field(30.0, gt=0)
    storage_cidv0_aliases: bool = True

    # -- webhooks
    webhook_allow_private: bool | None = None
    webhook_timeout_seconds: float = Field(5.0, gt=0)
    webhook_delivery_interval_seconds: float = Field(1.0, gt=0)
    webhook_disable_after_hours: float = Field(72.0, gt=0)
    webhook_disable_min_failures: int = Field(10, ge=1)
    webhook_retry_hours: float = Field(72.0, gt=0)
    events_visibility_lag_seconds: float = Field(1.0, ge=0)
    events_retention_days: float = Field(30.0, gt=0)
    task_log_retention_days: float = Field(30.0, gt=0)

    @field_validator("log_level", "log_format", "wakeup_relay", "stake_id_mode", mode="before")
    @classmethod
    def _choice_in_any_case(cls, v: object) -> object:
        """LOG_LEVEL=INFO means info: the choices are words, not case-sensitive names."""
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("server_endpoint")
    @classmethod
    def _endpoint_is_a_path(cls, v: str) -> str:
        if "://" in v:
            raise ValueError(f"must be a path such as /api, not a URL ({v!r})")
        if not v.startswith("/"):
            raise ValueError(f"must start with '/' ({v!r})")
        return v.rstrip("/") or ""

    @field_validator("admin_addresses")
    @classmethod
    def _admin_addresses_are_addresses(cls, v: str) -> str:
        for part in _split(v):
            if not (part.startswith("0x") and len(part) == 42):
                raise ValueError(f"not a 0x address: {part!r}")
            int(part[2:], 16)
        return v

    @field_validator(
        "min_stake",
        "price_task_base",
        "price_cpu_core_second",
        "price_memory_mb_second",
        "price_gpu_second",
        "settlement_max_fee_per_gas",
        mode="before",
    )
    @classmethod
    def _base_units(cls, v: object) -> int:
        if isinstance(v, str | int):
            try:
                return parse_base_units(v)
            except AmountError as exc:
                raise ValueError(str(exc)) from None
        raise ValueError(f"must be an integer number of base units, not {type(v).__name__}")

    @field_validator("database_url")
    @classmethod
    def _database_url_scheme(cls, v: str) -> str:
        if v and not v.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("must be a sqlite+aiosqlite:// or postgresql+asyncpg:// URL")
        found = _URL_PORT.match(v)
        port = found["port"] if found is not None else None
        if port and not port.isdigit():  # not shown: a misread password may be in it
            if ":" in port:
                raise ValueError(
                    "its port is not a number: an IPv6 host goes in brackets "
                    "(postgresql+asyncpg://user@[::1]:5432/parity)"
                )
            raise ValueError(
                "its port is not a number (in the user name or password, write @ : / as "
                "%40 %3A %2F)"
            )
        return v

    @field_validator("database_host")
    @classmethod
    def _database_host(cls, v: str) -> str:
        """A host name or an IP address; an IPv6 literal with or without its brackets (``::1``
        or ``[::1]``). Kept without brackets: resolved_database_url adds them."""
        host = v.strip()
        bracketed = host.startswith("[") and host.endswith("]")
        if bracketed:
            host = host[1:-1]
        if not host:
            return ""
        if any(c.isspace() or c in "/@?#[]" for c in host):
            raise ValueError("must be a host name or an IP address")
        if ":" in host or bracketed:
            try:
                ipaddress.IPv6Address(host)  # a zone (fe80::1%eth0) included
            except ValueError:
                raise ValueError(
                    "must be a host name or an IP address, without a port (that goes in "
                    "DATABASE_PORT)"
                ) from None
        return host

    @field_validator("filecoin_rpc")
    @classmethod
    def _rpc_is_an_http_url(cls, v: str) -> str:
        """The chain node's JSON-RPC endpoint: the adapter speaks JSON-RPC over HTTP(S)."""
        v = v.strip()
        if v and not _is_http_url(v):
            raise ValueError(
                "must be the http:// or https:// URL of the chain node's JSON-RPC endpoint "
                "(e.g. http://127.0.0.1:8545), or empty for no chain"
            )
        return v

    @field_validator("server_public_url", "filecoin_ipfs_endpoint", "filecoin_gateway_url")
    @classmethod
    def _base_url_is_http(cls, v: str, info: ValidationInfo) -> str:
        """Base URLs the server builds links and requests on: a typo (no scheme, another
        scheme) would otherwise surface only as broken links or 500s at the first use."""
        v = v.strip()
        if v and not (_is_http_url(v) and _has_valid_port(v)):
            raise ValueError(
                f"must be an http:// or https:// URL with a host (e.g. "
                f"{_URL_EXAMPLES[info.field_name or '']}), or empty"
            )
        return v

    @field_validator("stream_bus_url")
    @classmethod
    def _stream_bus_scheme(cls, v: str) -> str:
        v = v.strip()
        if not v or v.startswith(REDIS_BUS_SCHEMES):
            return v
        servers = [part.strip() for part in v.split(",")]
        if all(_is_nats_url(part) for part in servers):
            return ",".join(servers)
        raise ValueError(
            "must be empty (in-process), a redis://, rediss:// or unix:// URL, or nats:// or "
            "tls:// URLs with a host (several servers of one NATS cluster comma-separated)"
        )

    @field_validator("min_stake_tokens")
    @classmethod
    def _token_units(cls, v: str) -> str:
        if v.strip():
            try:  # the token's decimals are known only once the chain answers: check the shape
                parse_token_amount(v, len(v.strip().partition(".")[2]), allow_zero=True)
            except AmountError as exc:
                raise ValueError(str(exc)) from None
        return v.strip()

    @field_validator("protocol_fee_address")
    @classmethod
    def _fee_address(cls, v: str) -> str:
        if v and not (v.startswith("0x") and len(v) == 42 and _is_hex(v[2:])):
            raise ValueError(f"not a 0x address: {v!r}")
        return v.lower()

    @model_validator(mode="after")
    def _one_minimum_stake(self) -> Settings:
        if self.min_stake and self.min_stake_tokens:
            raise ValueError("set MIN_STAKE (base units) or MIN_STAKE_TOKENS (tokens), not both")
        return self

    @model_validator(mode="after")
    def _money_needs_a_chain(self) -> Settings:
        if self.protocol_fee_bps and not self.protocol_fee_address:
            raise ValueError(
                "PROTOCOL_FEE_BPS is set but PROTOCOL_FEE_ADDRESS is empty: name the account "
                "that receives the fee"
            )
        needs = [
            k
            for k, on in (
                ("pricing (PRICE_*)", self.pricing_enabled),
                ("MIN_STAKE", self.min_stake > 0 or bool(self.min_stake_tokens)),
            )
            if on
        ]
        if needs and not (self.filecoin_rpc and self.filecoin_stake_wallet_address):
            raise ValueError(
                f"{' and '.join(needs)} need the chain: set FILECOIN_RPC and "
                "FILECOIN_STAKE_WALLET_ADDRESS (balances and stake live in the StakeWallet)"
            )
        return self

    @model_validator(mode="after")
    def _no_storage_deals(self) -> Settings:
        if self.filecoin_create_storage_deals:
            raise ValueError(
                "FILECOIN_CREATE_STORAGE_DEALS=true is not supported: Filecoin storage deals are "
                "not implemented; content is stored in IPFS only"
            )
        return self

    # Only init kwargs: load_settings() merges the environment and .env itself so that the
    # FILECOIN_/BLOCKCHAIN_ alias rule is applied in one place.
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    # -- derived values
    @property
    def pricing_enabled(self) -> bool:
        return any(
            (
                self.price_task_base,
                self.price_cpu_core_second,
                self.price_memory_mb_second,
                self.price_gpu_second,
            )
        )

    @property
    def home(self) -> Path:
        return self.parity_home.expanduser()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            if url.startswith("postgres://"):
                url = "postgresql+asyncpg://" + url[len("postgres://") :]
            elif url.startswith("postgresql://"):
                url = "postgresql+asyncpg://" + url[len("postgresql://") :]
            elif url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite"):
                url = "sqlite+aiosqlite://" + url[len("sqlite://") :]
            return url
        if self.database_host:
            # Quoted as SQLAlchemy's URL parser unquotes them (a password with @:/ included);
            # an IPv6 literal is bracketed, its zone (fe80::1%eth0) left as written.
            auth = quote(self.database_username or "postgres", safe="")
            if self.database_password:
                auth += ":" + quote(self.database_password, safe="")
            host = self.database_host
            if ":" in host:
                host = f"[{host}]"
            name = quote(self.database_name or "parity", safe="")
            return f"postgresql+asyncpg://{auth}@{host}:{self.database_port}/{name}"
        return f"sqlite+aiosqlite:///{self.home / 'parity.db'}"

    @property
    def database_source(self) -> str:
        """The settings that chose the database, for messages: ``DATABASE_URL``, the
        ``DATABASE_*`` parts that are set, or ``PARITY_HOME`` (the embedded default)."""
        if self.database_url:
            return "DATABASE_URL"
        if self.database_host:
            parts = ("host", "port", "username", "password", "name")
            return ", ".join(
                f"DATABASE_{p.upper()}" for p in parts if f"database_{p}" in self.model_fields_set
            )
        return "PARITY_HOME, embedded mode"

    @property
    def blocks_path(self) -> Path:
        return (self.storage_path or self.home / "blocks").expanduser()

    @property
    def embedded(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def admins(self) -> frozenset[str]:
        return frozenset(a.lower() for a in _split(self.admin_addresses))

    @property
    def offline_timeout_seconds(self) -> float:
        if self.runner_offline_timeout_seconds is not None:
            return self.runner_offline_timeout_seconds
        if self.scheduler_interval is not None:
            return self.scheduler_interval * 60.0
        return 300.0

    @property
    def lease_seconds(self) -> float:
        floor = 3 * self.runner_heartbeat_interval_seconds
        return max(self.task_lease_seconds or floor, floor)

    @property
    def allow_private_webhooks(self) -> bool:
        if self.webhook_allow_private is not None:
            return self.webhook_allow_private
        return self.embedded

    @property
    def public_url(self) -> str:
        if self.server_public_url:
            return self.server_public_url.rstrip("/")
        return f"http://{self.server_host}:{self.server_port}"


# The host and port of a database URL as SQLAlchemy's parser reads them (a password may hold an
# unquoted '/' or ':'): a port that is not a number stops start-up naming DATABASE_URL.
_URL_PORT = re.compile(
    r"[\w+]+://(?:[^:/]*(?::[^@]*)?@)?(?:\[[^/?]+\]|[^/:?]+)?(?::(?P<port>[^/?]*))?"
)


# What each base URL looks like, for the message that refuses a malformed one.
_URL_EXAMPLES = {
    "server_public_url": "https://parity.example.com",
    "filecoin_ipfs_endpoint": "http://127.0.0.1:5001",
    "filecoin_gateway_url": "https://ipfs.io",
}


def _is_http_url(url: str) -> bool:
    """An http:// or https:// URL with a host."""
    parts = urlsplit(url)
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


REDIS_BUS_SCHEMES = ("redis://", "rediss://", "unix://")
"""STREAM_BUS_URL prefixes of a Redis bus (parity.llm.streams opens the bus they name)."""
NATS_BUS_SCHEMES = ("nats://", "tls://")
"""STREAM_BUS_URL prefixes of a NATS bus (each server of a comma-separated list)."""


def _is_nats_url(url: str) -> bool:
    """A nats:// or tls:// URL with a host and a valid port (one server of STREAM_BUS_URL)."""
    parts = urlsplit(url)
    return url.startswith(NATS_BUS_SCHEMES) and bool(parts.hostname) and _has_valid_port(url)


def _has_valid_port(url: str) -> bool:
    """False for a URL whose port is not a number from 0 to 65535 (reading it raises)."""
    try:
        urlsplit(url).port  # noqa: B018 - reading the port is the check
    except ValueError:
        return False
    return True


def _is_hex(v: str) -> bool:
    try:
        int(v, 16)
    except ValueError:
        return False
    return True


def _split(v: str) -> list[str]:
    return [p.strip() for p in v.split(",") if p.strip()]


def _merge_sources(environ: Mapping[str, str], env_file: Path | None) -> dict[str, str]:
    merged: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(environ)
    return merged


def _apply_aliases(raw: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The settings under their canonical names, and canonical -> alias for each value that
    came from an alias (so an error can name the key the user wrote)."""
    upper = {k.upper(): v for k, v in raw.items()}
    used: dict[str, str] = {}
    for canonical, alias in ALIASES.items():
        if alias in upper:
            if canonical in upper and upper[canonical] != upper[alias]:
                warnings.warn(
                    f"{canonical} and {alias} are both set and differ; using {canonical}",
                    stacklevel=3,
                )
            if canonical not in upper:
                upper[canonical] = upper[alias]
                used[canonical] = alias
            del upper[alias]
    return upper, used


def _settings_file(
    env: Mapping[str, str], env_file: str | Path | None, config_file: str | Path | None
) -> Path | None:
    """The .env file to read: ``config_file`` (a ``--config`` flag, which must exist) when
    given, else the file ``PARITY_CONFIG_PATH`` names, else ``env_file`` (None: none). Without a
    flag, a file that does not exist is read as empty. ``PARITY_CONFIG_PATH`` naming a missing
    file is warned about, as a typo there would otherwise run on defaults unnoticed; naming
    ``/dev/null`` says "no settings file" without a warning."""
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"--config names {str(config_file)!r}: no such file")
        return path
    if env_file is None:
        return None
    named = env.get(CONFIG_PATH_ENV)
    if not named:
        return Path(env_file).expanduser()
    path = Path(named).expanduser()
    if not path.is_file() and str(path) != os.devnull:
        warnings.warn(
            f"{CONFIG_PATH_ENV} names {named!r}: no such file, so no settings file is read "
            f"(the environment and the defaults only; {CONFIG_PATH_ENV}={os.devnull} says so "
            "without this warning)",
            stacklevel=1,  # one place: said once per process, however many reads
        )
    return path


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: str | Path | None = ".env",
    *,
    config_file: str | Path | None = None,
) -> Settings:
    """Read settings from the environment and a .env file (environment wins): ``config_file``
    when given (a ``--config`` flag beats ``PARITY_CONFIG_PATH``), else the file
    ``PARITY_CONFIG_PATH`` names, else ``env_file`` if it exists (None: no file)."""
    env = os.environ if environ is None else environ
    path = _settings_file(env, env_file, config_file)
    raw, aliased = _apply_aliases(_merge_sources(env, path))
    known = {name.upper() for name in Settings.model_fields}
    data: dict[str, Any] = {k.lower(): v for k, v in raw.items() if k in known and v != ""}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, aliased)) from None


def print_bind_address() -> None:
    """For `make watch`: print ``SERVER_HOST SERVER_PORT`` as the server reads them (the
    environment, then ``.env`` or ``PARITY_CONFIG_PATH``); a bad setting exits 2 naming it."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(settings.server_host, settings.server_port)


def _describe(exc: ValidationError, aliased: Mapping[str, str]) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "settings"
        key = loc.upper() if loc != "settings" else "configuration"
        if key in aliased:
            key = f"{aliased[key]} (read as {key})"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        field = Settings.model_fields.get(loc)
        secret = field is not None and field.repr is False  # a password, key or URL with one
        shown = (
            f" (got {value!r})"
            if isinstance(value, str | int | float) and loc and not secret
            else ""
        )
        parts.append(f"{key}: {msg}{shown}")
    return "invalid configuration: " + "; ".join(parts)
