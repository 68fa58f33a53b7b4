"""What the entry point builds once and hands down: settings, clock, ids, database."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from parity.auth.service import AuthConfig, AuthDeps
from parity.clock import Clock, SystemClock
from parity.config import Settings
from parity.db.session import Database


@dataclass
class Container:
    settings: Settings
    db: Database
    clock: Clock = field(default_factory=SystemClock)
    random_bytes: Callable[[int], bytes] = secrets.token_bytes
    started_monotonic: float = field(default_factory=time.monotonic)
    draining: bool = False

    @property
    def auth(self) -> AuthDeps:
        s = self.settings
        return AuthDeps(
            config=AuthConfig(
                public_url=s.public_url,
                chain_id=s.filecoin_chain_id,
                nonce_ttl_seconds=s.auth_nonce_ttl_seconds,
                session_ttl_seconds=s.auth_session_ttl_seconds,
                max_open_nonces=s.auth_max_open_nonces,
                admins=s.admins,
            ),
            clock=self.clock,
            random_bytes=self.random_bytes,
        )
