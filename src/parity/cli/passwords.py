"""The keystore password at the command line. Kept out of ``parity.chain.keystore`` so that
the keystore itself neither prompts nor reads the environment."""

from __future__ import annotations

import os
from typing import cast

import typer

PASSWORD_ENV = "PARITY_KEYSTORE_PASSWORD"


def password_from_env_or_prompt(confirm: bool) -> str:
    """Keystore password from ``PARITY_KEYSTORE_PASSWORD``, else an interactive prompt.

    ``confirm`` asks twice, for when a typo would lock the user out of a new keystore.
    """
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    return cast(
        str,
        typer.prompt("Keystore password", hide_input=True, confirmation_prompt=confirm),
    )
