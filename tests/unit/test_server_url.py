"""One rule picks the server of every client command: --server, PARITY_SERVER_URL, the last
sign-in, then the server's own settings (environment and .env)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parity.cli.credentials import save_token
from parity.cli.server_url import ServerUrlError, configured_server_url, resolve_server_url

ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    path = tmp_path / "home" / "credentials.json"
    save_token(path, "http://signed-in.test:7000/", ADDRESS, "t", "2030-01-01T00:00:00Z")
    return path


@pytest.fixture
def dotenv(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text("SERVER_HOST=127.0.0.1\nSERVER_PORT=9191\n")
    return path


def test_the_flag_wins_over_everything(creds: Path, dotenv: Path) -> None:
    env = {"PARITY_SERVER_URL": "http://env.test"}
    got = resolve_server_url("http://flag.test/", credentials=creds, config=dotenv, environ=env)
    assert (got.url, got.source) == ("http://flag.test", "--server")


def test_the_environment_comes_next(creds: Path, dotenv: Path) -> None:
    env = {"PARITY_SERVER_URL": "http://env.test:1234"}
    got = resolve_server_url(None, credentials=creds, config=dotenv, environ=env)
    assert (got.url, got.source) == ("http://env.test:1234", "PARITY_SERVER_URL")


def test_then_the_server_signed_in_to_last(creds: Path, dotenv: Path) -> None:
    got = resolve_server_url(None, credentials=creds, config=dotenv, environ={})
    assert got.url == "http://signed-in.test:7000"
    assert str(creds) in got.source


def test_then_the_port_the_server_itself_is_configured_with(tmp_path: Path, dotenv: Path) -> None:
    missing = tmp_path / "nowhere" / "credentials.json"
    got = resolve_server_url(None, credentials=missing, config=dotenv, environ={})
    assert got.url == "http://127.0.0.1:9191"
    assert got.source == "SERVER_HOST/SERVER_PORT"


def test_the_environment_overrides_dotenv_as_for_the_server(dotenv: Path) -> None:
    got = configured_server_url(dotenv, {"SERVER_PORT": "9393"})
    assert got.url == "http://127.0.0.1:9393"


def test_the_public_url_is_preferred_over_the_bind_address(dotenv: Path) -> None:
    got = configured_server_url(dotenv, {"SERVER_PUBLIC_URL": "https://parity.example/"})
    assert (got.url, got.source) == ("https://parity.example", "SERVER_PUBLIC_URL")


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("::", "http://[::1]:8080"),
        ("::1", "http://[::1]:8080"),
    ],
)
def test_a_wildcard_or_ipv6_bind_address_becomes_a_reachable_url(
    tmp_path: Path, host: str, url: str
) -> None:
    got = configured_server_url(tmp_path / "no.env", {"SERVER_HOST": host})
    assert got.url == url


def test_with_nothing_configured_the_servers_defaults_apply(tmp_path: Path) -> None:
    got = resolve_server_url(None, credentials=None, config=tmp_path / "no.env", environ={})
    assert got.url == "http://127.0.0.1:8080"


def test_a_bad_value_names_where_it_came_from(creds: Path, dotenv: Path) -> None:
    with pytest.raises(ServerUrlError, match=r"PARITY_SERVER_URL is 'parity\.test:80'"):
        resolve_server_url(None, config=dotenv, environ={"PARITY_SERVER_URL": "parity.test:80"})
    with pytest.raises(ServerUrlError, match="--server is 'ftp://x'"):
        resolve_server_url("ftp://x", environ={})


def test_unreadable_settings_say_how_to_name_the_server(tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("SERVER_PORT=eighty\n")
    with pytest.raises(ServerUrlError, match=r"SERVER_PORT.*pass --server URL"):
        resolve_server_url(None, config=bad, environ={})
