"""Configuration parsing, aliases and refusal of bad values."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from parity.config import Settings, load_settings, print_bind_address
from parity.errors import ConfigError


def test_defaults_give_embedded_sqlite_under_parity_home(tmp_path: Path):
    s = load_settings({"PARITY_HOME": str(tmp_path)}, env_file=None)
    assert s.embedded
    assert s.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'parity.db'}"
    assert s.server_endpoint == "/api" and s.server_port == 8080


def test_database_parts_compose_a_postgres_url():
    s = load_settings(
        {
            "DATABASE_HOST": "db",
            "DATABASE_PORT": "5433",
            "DATABASE_USERNAME": "u",
            "DATABASE_PASSWORD": "p@ss",
            "DATABASE_NAME": "parity",
        },
        env_file=None,
    )
    assert s.resolved_database_url == "postgresql+asyncpg://u:p%40ss@db:5433/parity"
    assert not s.embedded


def test_database_url_overrides_parts_and_plain_schemes_get_async_drivers():
    s = load_settings(
        {"DATABASE_URL": "postgres://x@h/d", "DATABASE_HOST": "ignored"}, env_file=None
    )
    assert s.resolved_database_url == "postgresql+asyncpg://x@h/d"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SERVER_PORT": "eighty"}, "SERVER_PORT"),
        ({"SERVER_PORT": "70000"}, "SERVER_PORT"),
        ({"SERVER_ENDPOINT": "http://localhost:8080"}, "SERVER_ENDPOINT"),
        ({"SERVER_ENDPOINT": "api"}, "SERVER_ENDPOINT"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"ADMIN_ADDRESSES": "0x12,bob"}, "ADMIN_ADDRESSES"),
        ({"SCHEDULER_INTERVAL_SECONDS": "0"}, "SCHEDULER_INTERVAL_SECONDS"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"FILECOIN_CHAIN_ID": "-1"}, "FILECOIN_CHAIN_ID"),
    ],
)
def test_bad_values_stop_startup_naming_the_key(env: dict[str, str], key: str):
    with pytest.raises(ConfigError) as exc:
        load_settings(env, env_file=None)
    assert key in str(exc.value)


def test_storage_deals_are_refused_at_startup():
    with pytest.raises(ConfigError, match="FILECOIN_CREATE_STORAGE_DEALS"):
        load_settings({"FILECOIN_CREATE_STORAGE_DEALS": "true"}, env_file=None)
    with pytest.raises(ConfigError, match="not supported"):
        load_settings({"BLOCKCHAIN_CREATE_STORAGE_DEALS": "true"}, env_file=None)


def test_blockchain_aliases_are_accepted():
    s = load_settings({"BLOCKCHAIN_RPC": "http://rpc", "BLOCKCHAIN_CHAIN_ID": "314"}, env_file=None)
    assert s.filecoin_rpc == "http://rpc" and s.filecoin_chain_id == 314


def test_filecoin_wins_over_blockchain_and_the_conflict_is_warned():
    with pytest.warns(UserWarning, match="FILECOIN_RPC and BLOCKCHAIN_RPC"):
        s = load_settings(
            {"FILECOIN_RPC": "http://new", "BLOCKCHAIN_RPC": "http://old"}, env_file=None
        )
    assert s.filecoin_rpc == "http://new"


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("SERVER_PORT=9001\nSERVER_HOST=0.0.0.0\n")
    s = load_settings({"SERVER_PORT": "9002"}, env_file=env_file)
    assert s.server_port == 9002 and s.server_host == "0.0.0.0"


def test_parity_config_path_points_at_another_file(tmp_path: Path):
    other = tmp_path / "custom.env"
    other.write_text("SERVER_PORT=9100\n")
    s = load_settings({"PARITY_CONFIG_PATH": str(other)}, env_file=".env")
    assert s.server_port == 9100


def test_scheduler_interval_keeps_its_original_meaning_in_minutes():
    s = load_settings({"SCHEDULER_INTERVAL": "2"}, env_file=None)
    assert s.offline_timeout_seconds == 120.0
    s2 = load_settings(
        {"SCHEDULER_INTERVAL": "2", "RUNNER_OFFLINE_TIMEOUT_SECONDS": "45"}, env_file=None
    )
    assert s2.offline_timeout_seconds == 45.0


def test_lease_is_at_least_three_heartbeats():
    s = load_settings(
        {"RUNNER_HEARTBEAT_INTERVAL_SECONDS": "10", "TASK_LEASE_SECONDS": "5"}, env_file=None
    )
    assert s.lease_seconds == 30.0


def test_admin_addresses_are_lowercased_and_split():
    a = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    s = load_settings({"ADMIN_ADDRESSES": f" {a} , 0x{'ab' * 20}"}, env_file=None)
    assert s.admins == {a.lower(), "0x" + "ab" * 20}


def test_private_webhooks_default_on_only_in_embedded_mode():
    assert load_settings({}, env_file=None).allow_private_webhooks is True
    pg = load_settings({"DATABASE_URL": "postgresql+asyncpg://x@h/d"}, env_file=None)
    assert pg.allow_private_webhooks is False


def test_env_example_documents_every_setting():
    import re

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    from parity.config import Settings

    missing = [
        k.upper()
        for k in Settings.model_fields
        if not re.search(rf"^#?\s*{k.upper()}=", text, re.MULTILINE)
    ]
    assert missing == []


CHAIN = {"FILECOIN_RPC": "http://127.0.0.1:8545", "FILECOIN_STAKE_WALLET_ADDRESS": "0x" + "5a" * 20}


def test_pricing_and_min_stake_need_the_chain():
    with pytest.raises(ConfigError, match="FILECOIN_RPC"):
        load_settings({"PRICE_CPU_CORE_SECOND": "10"}, env_file=None)
    with pytest.raises(ConfigError, match="MIN_STAKE"):
        load_settings({"MIN_STAKE": "1"}, env_file=None)
    s = load_settings({"PRICE_CPU_CORE_SECOND": "10", **CHAIN}, env_file=None)
    assert s.pricing_enabled and s.price_cpu_core_second == 10


def test_a_protocol_fee_needs_its_account_and_prices_are_base_units():
    with pytest.raises(ConfigError, match="PROTOCOL_FEE_ADDRESS"):
        load_settings({"PROTOCOL_FEE_BPS": "250"}, env_file=None)
    with pytest.raises(ConfigError, match=r"(?i)price_task_base"):
        load_settings({"PRICE_TASK_BASE": "1.5", **CHAIN}, env_file=None)
    s = load_settings(
        {"PROTOCOL_FEE_BPS": "250", "PROTOCOL_FEE_ADDRESS": "0x" + "AB" * 20}, env_file=None
    )
    assert s.protocol_fee_address == "0x" + "ab" * 20


def test_min_stake_in_tokens_is_checked_and_exclusive_with_base_units():
    s = load_settings({"MIN_STAKE_TOKENS": "2.5", **CHAIN}, env_file=None)
    assert s.min_stake_tokens == "2.5"
    with pytest.raises(ConfigError, match="not both"):
        load_settings({"MIN_STAKE_TOKENS": "2", "MIN_STAKE": "5", **CHAIN}, env_file=None)
    with pytest.raises(ConfigError, match="MIN_STAKE_TOKENS"):
        load_settings({"MIN_STAKE_TOKENS": "-1", **CHAIN}, env_file=None)
    with pytest.raises(ConfigError, match="FILECOIN_RPC"):
        load_settings({"MIN_STAKE_TOKENS": "1"}, env_file=None)


def test_a_config_flag_wins_over_parity_config_path(tmp_path: Path):
    flag, variable = tmp_path / "flag.env", tmp_path / "variable.env"
    flag.write_text("SERVER_PORT=9201\n")
    variable.write_text("SERVER_PORT=9202\n")
    env = {"PARITY_CONFIG_PATH": str(variable)}
    assert load_settings(env, config_file=flag).server_port == 9201
    assert load_settings(env).server_port == 9202


def test_a_config_flag_naming_no_file_is_an_error_and_the_variable_is_not(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"--config names '.*typo\.env': no such file"):
        load_settings({}, config_file=tmp_path / "typo.env")
    # PARITY_CONFIG_PATH naming a missing file reads no file, with a warning naming it (a typo
    # there would otherwise run a server on defaults unnoticed); /dev/null says so silently.
    missing = {"PARITY_CONFIG_PATH": str(tmp_path / "none.env")}
    with pytest.warns(UserWarning, match=r"PARITY_CONFIG_PATH names '.*none\.env': no such file"):
        assert load_settings(missing).server_port == 8080
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_settings({"PARITY_CONFIG_PATH": os.devnull}).server_port == 8080


@pytest.mark.parametrize("value", ["notaurl", "127.0.0.1:8545", "ws://node:8546", "http://"])
def test_filecoin_rpc_must_be_an_http_url(value: str):
    with pytest.raises(ConfigError, match=r"FILECOIN_RPC: must be the http:// or https:// URL"):
        load_settings({"FILECOIN_RPC": value}, env_file=None)
    with pytest.raises(ConfigError, match=r"BLOCKCHAIN_RPC \(read as FILECOIN_RPC\)"):
        load_settings({"BLOCKCHAIN_RPC": value}, env_file=None)


def test_filecoin_rpc_http_and_https_urls_are_accepted():
    for value in ("http://127.0.0.1:8545", "https://api.calibration.node.glif.io/rpc/v1"):
        assert load_settings({"FILECOIN_RPC": value}, env_file=None).filecoin_rpc == value


@pytest.mark.parametrize(
    "key", ["SERVER_PUBLIC_URL", "FILECOIN_IPFS_ENDPOINT", "FILECOIN_GATEWAY_URL"]
)
@pytest.mark.parametrize(
    "value", ["notaurl", "127.0.0.1:5001", "ftp://h", "http://", "http://h:99999"]
)
def test_base_urls_must_be_http_urls_naming_the_key(key: str, value: str):
    with pytest.raises(ConfigError, match=rf"{key}: must be an http:// or https:// URL"):
        load_settings({key: value}, env_file=None)


def test_base_urls_that_are_http_urls_are_accepted():
    for value in ("http://127.0.0.1:5001", "https://parity.example/prefix/", "http://[::1]:8080"):
        for key in ("SERVER_PUBLIC_URL", "FILECOIN_IPFS_ENDPOINT", "FILECOIN_GATEWAY_URL"):
            assert getattr(load_settings({key: value}, env_file=None), key.lower()) == value


def test_bind_address_for_make_watch_is_read_as_the_server_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    (tmp_path / "w.env").write_text("SERVER_PORT=9311\nSERVER_HOST=0.0.0.0\n")
    monkeypatch.setenv("PARITY_CONFIG_PATH", str(tmp_path / "w.env"))
    monkeypatch.setenv("SERVER_PORT", "9312")  # the environment wins over the file
    monkeypatch.delenv("SERVER_HOST", raising=False)
    print_bind_address()
    assert capsys.readouterr().out == "0.0.0.0 9312\n"
    monkeypatch.setenv("SERVER_PORT", "x")
    with pytest.raises(SystemExit) as stopped:
        print_bind_address()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("error: invalid configuration: SERVER_PORT")


def test_make_watch_binds_where_the_settings_say():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    recipe = makefile.split("\nwatch:", 1)[1].split("\n\n", 1)[0]
    assert "print_bind_address" in recipe
    assert "8080" not in recipe


def test_an_invalid_value_set_through_an_alias_is_named_as_written():
    with pytest.raises(ConfigError, match=r"BLOCKCHAIN_CHAIN_ID \(read as FILECOIN_CHAIN_ID\)"):
        load_settings({"BLOCKCHAIN_CHAIN_ID": "abc"}, env_file=None)
    with pytest.raises(ConfigError) as caught:
        load_settings({"FILECOIN_CHAIN_ID": "abc"}, env_file=None)
    assert "BLOCKCHAIN" not in str(caught.value)


@pytest.mark.parametrize("host", ["::1", "[::1]", " ::1 "])
def test_an_ipv6_database_host_is_bracketed_with_or_without_its_brackets(host: str):
    from sqlalchemy.engine import make_url

    s = load_settings({"DATABASE_HOST": host, "DATABASE_NAME": "x"}, env_file=None)
    assert s.resolved_database_url == "postgresql+asyncpg://postgres@[::1]:5432/x"
    url = make_url(s.resolved_database_url)  # what the engine parses (it raised on ":1:5432")
    assert (url.host, url.port, url.database) == ("::1", 5432, "x")


def test_every_database_part_survives_sqlalchemys_parser():
    from sqlalchemy.engine import make_url

    parts = {"username": "u@x:y", "password": "p@:/ss?#%", "host": "fe80::1%eth0"}
    s = load_settings(
        {
            "DATABASE_HOST": parts["host"],
            "DATABASE_PORT": "5433",
            "DATABASE_USERNAME": parts["username"],
            "DATABASE_PASSWORD": parts["password"],
            "DATABASE_NAME": "my db/x?y",
        },
        env_file=None,
    )
    url = make_url(s.resolved_database_url)
    assert (url.username, url.password, url.host) == (
        parts["username"],
        parts["password"],
        parts["host"],
    )
    assert (url.port, url.database) == (5433, "my db/x?y")
    for host in ("db.example", "10.0.0.7", "2001:db8::5"):
        parsed = make_url(
            load_settings({"DATABASE_HOST": host}, env_file=None).resolved_database_url
        )
        assert (parsed.host, parsed.port, parsed.database) == (host, 5432, "parity")


@pytest.mark.parametrize("host", ["db:5433", "127.0.0.1:5432", "user@db", "db/parity", "[db]"])
def test_a_database_host_that_is_not_a_host_is_refused_naming_the_key(host: str):
    with pytest.raises(ConfigError, match="DATABASE_HOST: must be a host name or an IP address"):
        load_settings({"DATABASE_HOST": host}, env_file=None)


def test_the_database_source_names_the_settings_that_chose_it(tmp_path: Path):
    url = {"DATABASE_URL": "postgresql://u:pw@h/d", "DATABASE_HOST": "ignored"}
    assert load_settings(url, env_file=None).database_source == "DATABASE_URL"
    parts = {"DATABASE_HOST": "h", "DATABASE_NAME": "d", "DATABASE_PASSWORD": ""}
    assert load_settings(parts, env_file=None).database_source == "DATABASE_HOST, DATABASE_NAME"
    embedded = load_settings({"PARITY_HOME": str(tmp_path)}, env_file=None)
    assert embedded.database_source == "PARITY_HOME, embedded mode"


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("postgresql+asyncpg://u:Sekr1t@::1:5432/x", "an IPv6 host goes in brackets"),
        ("postgresql://u:Sekr1t@h:Sekr1t/x", "write @ : / as %40 %3A %2F"),
    ],
)
def test_a_database_url_whose_port_is_not_a_number_is_refused_without_echoing_it(
    url: str, hint: str
):
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": url}, env_file=None)
    assert "DATABASE_URL: its port is not a number" in str(caught.value)
    assert hint in str(caught.value)
    assert "Sekr1t" not in str(caught.value)


def test_database_urls_that_sqlalchemy_reads_are_kept():
    from sqlalchemy.engine import make_url

    for url in (
        "postgresql+asyncpg://u@[::1]:5432/d",
        "postgresql://u:a/b:c@h:5432/d",  # an unquoted / and : in the password
        "postgresql://h/d",
        "sqlite+aiosqlite:////tmp/p.db",
    ):
        s = load_settings({"DATABASE_URL": url}, env_file=None)
        make_url(s.resolved_database_url)  # raises if the engine could not read it


def test_database_secrets_stay_out_of_repr_and_error_messages():
    s = load_settings(
        {"DATABASE_URL": "postgresql://u:Sekr1t@h/d", "DATABASE_PASSWORD": "Sekr1t"},
        env_file=None,
    )
    assert "Sekr1t" not in repr(s)
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": "mysql://u:Sekr1t@h/d"}, env_file=None)
    assert "DATABASE_URL" in str(caught.value) and "Sekr1t" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("postgresql+asyncpg://u:a/b@h:5433/d", "PostgreSQL mode, h:5433/d"),  # "/" unquoted
        (
            "postgresql+asyncpg://u:p%40ss@db.example/parity",
            "PostgreSQL mode, db.example:5432/parity",
        ),
    ],
)
def test_the_database_label_reads_the_url_as_the_engine_does(url: str, label: str) -> None:
    # It split the URL by hand and crashed the start-up on a password holding a "/", which the
    # engine itself accepts.
    from parity.storage.factory import database_label

    assert database_label(Settings(database_url=url)) == label


def test_word_choices_are_read_in_any_case():
    got = load_settings(
        {"LOG_LEVEL": "INFO", "LOG_FORMAT": "Console", "WAKEUP_RELAY": "OFF"}, env_file=None
    )
    assert (got.log_level, got.log_format, got.wakeup_relay) == ("info", "console", "off")
    assert load_settings({"STAKE_ID_MODE": "Device"}, env_file=None).stake_id_mode == "device"
    with pytest.raises(ConfigError, match=r"LOG_LEVEL: Input should be 'debug'"):
        load_settings({"LOG_LEVEL": "LOUD"}, env_file=None)
