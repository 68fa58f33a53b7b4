from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from parity.chain import keystore
from parity.chain.keystore import KeystoreError, create_keystore, load_account, read_address
from parity.cli import passwords
from parity.cli.passwords import password_from_env_or_prompt

TEST_KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
TEST_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
PRODUCTION_SCRYPT_N = keystore.SCRYPT_N  # captured before the fixture lowers it


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The production cost (2**18) takes about a second per operation.
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)


def test_keystore_file_is_private_and_holds_no_plaintext_key(tmp_path: Path) -> None:
    path = tmp_path / "home" / "keystore.json"
    create_keystore(path, "pw", "0x" + TEST_KEY)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    raw = path.read_bytes().lower()
    assert TEST_KEY.encode() not in raw
    assert bytes.fromhex(TEST_KEY) not in raw
    # No temp file is left behind next to the keystore.
    assert sorted(p.name for p in path.parent.iterdir()) == ["keystore.json"]


def test_generated_key_round_trips_to_same_address(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    address = create_keystore(path, "correct horse")

    account = load_account(path, "correct horse")

    assert account.address == address
    assert read_address(path) == address
    assert address.startswith("0x") and address != address.lower()


def test_imported_key_with_or_without_prefix_gives_known_address(tmp_path: Path) -> None:
    assert create_keystore(tmp_path / "a.json", "pw", TEST_KEY) == TEST_ADDRESS
    assert create_keystore(tmp_path / "b.json", "pw", "0x" + TEST_KEY.upper()) == TEST_ADDRESS
    assert load_account(tmp_path / "a.json", "pw").key.hex().removeprefix("0x") == TEST_KEY


def test_wrong_password_raises_keystore_error(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, "right", TEST_KEY)

    with pytest.raises(KeystoreError, match="wrong password") as info:
        load_account(path, "wrong")
    assert str(path) in str(info.value)


def test_missing_file_raises_keystore_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(KeystoreError, match="keystore not found at"):
        load_account(path, "pw")
    with pytest.raises(KeystoreError, match="keystore not found at"):
        read_address(path)


@pytest.mark.parametrize("content", ["not json", "{}", '{"version": 3, "crypto": {}}', "[1]"])
def test_non_v3_file_raises_keystore_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keystore.json"
    path.write_text(content)
    with pytest.raises(KeystoreError, match="not a V3 keystore"):
        load_account(path, "pw")


@pytest.mark.parametrize(
    "bad_key",
    [
        "",
        "0x1234",
        TEST_KEY[:-1],
        TEST_KEY + "00",
        "zz" + TEST_KEY[2:],
        "0" * 64,  # zero is not a valid secp256k1 scalar
        "f" * 64,  # above the curve order
    ],
)
def test_malformed_import_key_is_refused(tmp_path: Path, bad_key: str) -> None:
    path = tmp_path / "keystore.json"
    with pytest.raises(KeystoreError, match="invalid private key") as info:
        create_keystore(path, "pw", bad_key)
    if bad_key:
        assert bad_key not in str(info.value)  # secrets are never echoed
    assert not path.exists()


def test_existing_keystore_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    first = create_keystore(path, "pw")
    before = path.read_bytes()

    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        create_keystore(path, "pw", TEST_KEY)
    assert path.read_bytes() == before
    assert read_address(path) == first

    assert create_keystore(path, "pw", TEST_KEY, overwrite=True) == TEST_ADDRESS
    assert read_address(path) == TEST_ADDRESS
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_empty_password_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    with pytest.raises(KeystoreError, match="empty password"):
        create_keystore(path, "")
    assert not path.exists()


def test_keystore_json_is_v3_with_scrypt(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, "pw", TEST_KEY)

    doc = json.loads(path.read_text())
    assert doc["version"] == 3
    assert doc["crypto"]["kdf"] == "scrypt"
    assert doc["crypto"]["kdfparams"]["n"] == 2**10


def test_default_scrypt_cost_is_the_standard_one() -> None:
    # Guards against a test-only cost leaking into production defaults.
    assert PRODUCTION_SCRYPT_N == 2**18


def test_tampered_address_field_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, "pw", TEST_KEY)
    doc = json.loads(path.read_text())
    doc["address"] = "00" * 20
    path.write_text(json.dumps(doc))

    with pytest.raises(KeystoreError, match="does not match"):
        load_account(path, "pw")


def test_password_comes_from_env_before_prompting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARITY_KEYSTORE_PASSWORD", "from-env")

    def no_prompt(*args: object, **kwargs: object) -> str:
        raise AssertionError("must not prompt when the env var is set")

    monkeypatch.setattr(passwords.typer, "prompt", no_prompt)
    assert password_from_env_or_prompt(confirm=True) == "from-env"


def test_password_prompt_hides_input_and_confirms_on_create(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PARITY_KEYSTORE_PASSWORD", raising=False)
    seen: dict[str, object] = {}

    def fake_prompt(text: str, **kwargs: object) -> str:
        seen.update(kwargs)
        return "typed"

    monkeypatch.setattr(passwords.typer, "prompt", fake_prompt)
    assert password_from_env_or_prompt(confirm=True) == "typed"
    assert seen["hide_input"] is True
    assert seen["confirmation_prompt"] is True
