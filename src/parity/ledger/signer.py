"""The settlement signer: the key that sends ``transferPaymentRef``/``transferPayment``.

The StakeWallet lets only its owner move stake between ids, so this must be the owner's key of
the configured contract (the deployer on a ``dev-chain``). It comes from either
SETTLEMENT_PRIVATE_KEY (hex) or a V3 keystore at SETTLEMENT_KEYSTORE_PATH decrypted with
SETTLEMENT_KEYSTORE_PASSWORD, read once at start-up through the CLI's keystore helpers.
"""

from __future__ import annotations

from eth_account.signers.local import LocalAccount

from parity.chain.keystore import KeystoreError, account_from_private_key, load_account
from parity.config import Settings
from parity.errors import ConfigError


def load_settlement_signer(settings: Settings) -> LocalAccount | None:
    """The configured signer, or None when neither a key nor a keystore is set. A bad key, a
    missing keystore or a wrong password is a ConfigError naming the setting (never the key)."""
    key = settings.settlement_private_key.strip()
    path = settings.settlement_keystore_path
    if key and path is not None:
        raise ConfigError("set either SETTLEMENT_PRIVATE_KEY or SETTLEMENT_KEYSTORE_PATH, not both")
    try:
        if key:
            return account_from_private_key(key)
        if path is not None:
            if not settings.settlement_keystore_password:
                raise ConfigError(
                    "SETTLEMENT_KEYSTORE_PATH is set but SETTLEMENT_KEYSTORE_PASSWORD is empty"
                )
            return load_account(path, settings.settlement_keystore_password)
    except KeystoreError as exc:
        setting = "SETTLEMENT_PRIVATE_KEY" if key else "SETTLEMENT_KEYSTORE_PATH"
        raise ConfigError(f"{setting}: {exc}") from None
    return None
