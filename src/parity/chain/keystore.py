"""Encrypted wallet keystore (Ethereum V3 JSON, scrypt KDF).

The private key never touches the disk in plaintext: it is only ever written
encrypted, through a temp file that already has mode 0600 before any byte lands.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

# eth_account and eth_utils are imported where a key is made, decrypted or an address
# checksummed: they take most of a second to import, which every command line start would pay.

DEFAULT_KEYSTORE = Path("~/.parity/keystore.json")

# geth's "standard" scrypt cost (n=2**18, ~256 MiB, ~1 s). Module-level so tests
# can lower it; decryption reads the parameters back from the file, so keystores
# written with any cost stay readable.
SCRYPT_N = 2**18

_HEX_KEY = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
# secp256k1 group order: valid private keys lie in [1, n-1].
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_REQUIRED_CRYPTO_FIELDS = ("cipher", "cipherparams", "ciphertext", "kdf", "kdfparams", "mac")


class KeystoreError(Exception):
    """A keystore could not be created, read or decrypted; the message is user-facing."""


def write_private_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600.

    Readers see either the old file or the complete new one, never a torn write.
    The parent directory is created with mode 0700 when missing. With
    ``overwrite=False`` an existing file is never replaced, even if another
    process creates it between our check and our write.
    """
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
        # mkdir(mode=...) is filtered by the umask; chmod makes 0700 certain.
        parent.chmod(0o700)
    # mkstemp creates the file 0600, so the secret is never briefly world-readable.
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_no_clobber(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _publish_no_clobber(tmp: Path, path: Path) -> None:
    try:
        # link() fails atomically if the target exists, unlike an exists()+replace pair.
        os.link(tmp, path)
    except FileExistsError:
        raise KeystoreError(f"refusing to overwrite existing file {path}") from None
    except OSError:
        # Some filesystems have no hard links; accept the small race there.
        if path.exists():
            raise KeystoreError(f"refusing to overwrite existing file {path}") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def account_from_private_key(private_key: str) -> LocalAccount:
    """Validate a hex private key (64 hex chars, optional 0x) and wrap it in an account."""
    from eth_account import Account

    account: LocalAccount = Account.from_key(_normalize_private_key(private_key))
    return account


def _normalize_private_key(private_key: str) -> str:
    match = _HEX_KEY.fullmatch(private_key.strip())
    # Never echo the value back: it is a secret and ends up in terminals and logs.
    if match is None:
        raise KeystoreError(
            "invalid private key: expected 64 hex characters, optionally 0x-prefixed"
        )
    value = int(match.group(1), 16)
    if not 0 < value < _SECP256K1_N:
        raise KeystoreError("invalid private key: outside the secp256k1 key range")
    return "0x" + match.group(1).lower()


def create_keystore(
    path: Path,
    password: str,
    private_key: str | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Encrypt ``private_key`` (or a freshly generated one) into ``path``.

    Returns the checksummed address of the stored account.
    """
    path = Path(path).expanduser()
    if not password:
        raise KeystoreError("refusing to create a keystore with an empty password")
    if path.exists() and not overwrite:
        raise KeystoreError(f"keystore already exists at {path}; refusing to overwrite it")
    from eth_account import Account

    account: LocalAccount = (
        Account.create() if private_key is None else account_from_private_key(private_key)
    )
    encrypted = Account.encrypt(account.key, password, kdf="scrypt", iterations=SCRYPT_N)
    data = json.dumps(encrypted, indent=2).encode("utf-8")
    write_private_file(path, data, overwrite=overwrite)
    return str(account.address)


def _read_keystore_json(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeystoreError(f"keystore not found at {path}") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read keystore {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeystoreError(f"{path} is not a V3 keystore JSON file") from None
    if not _looks_like_v3(doc):
        raise KeystoreError(f"{path} is not a V3 keystore JSON file")
    return cast(dict[str, Any], doc)


def _looks_like_v3(doc: object) -> bool:
    if not isinstance(doc, dict) or doc.get("version") != 3:
        return False
    # Some writers (old geth, MyEtherWallet) capitalise the section name.
    crypto = doc.get("crypto", doc.get("Crypto"))
    return isinstance(crypto, dict) and all(k in crypto for k in _REQUIRED_CRYPTO_FIELDS)


def read_address(path: Path) -> str:
    """The checksummed address recorded in the keystore, without decrypting it."""
    path = Path(path).expanduser()
    doc = _read_keystore_json(path)
    address = doc.get("address")
    if not isinstance(address, str):
        raise KeystoreError(f"keystore {path} has no address field")
    from eth_utils.address import to_checksum_address

    try:
        return to_checksum_address(address if address.startswith("0x") else "0x" + address)
    except ValueError:
        raise KeystoreError(f"keystore {path} has a malformed address field") from None


def load_account(path: Path, password: str) -> LocalAccount:
    """Decrypt the keystore and return an ``eth_account`` ``LocalAccount``."""
    from eth_account import Account

    path = Path(path).expanduser()
    doc = _read_keystore_json(path)
    try:
        key = Account.decrypt(doc, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise KeystoreError(f"wrong password for keystore {path}") from None
        raise KeystoreError(f"cannot decrypt keystore {path}: {exc}") from None
    except (KeyError, TypeError):
        raise KeystoreError(f"{path} is not a V3 keystore JSON file") from None
    account: LocalAccount = Account.from_key(key)
    recorded = doc.get("address")
    # A mismatch means the file was edited or spliced; trusting either half is unsafe.
    if isinstance(recorded, str) and recorded.lower().removeprefix("0x") != (
        account.address.lower().removeprefix("0x")
    ):
        raise KeystoreError(f"keystore {path} address field does not match its key")
    return account
